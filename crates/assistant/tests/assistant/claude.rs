//! The Claude Code stream-json parser over every `claude-*` fixture (claude-code 2.1.329
//! and 2.0.77 real captures).

use parley_assistant::claude::ClaudeStream;
use parley_assistant::{AssistantError, Chunk, Usage};

use crate::{Capture, capture, fixtures_with_prefix};

const ZERO: &str = "00000000-0000-0000-0000-000000000000";

/// What a fixture must produce.
#[derive(Debug)]
enum Expect {
    /// Completed, with the reply text, and the session ID stored (init's).
    Completed {
        text: &'static str,
        session: Option<&'static str>,
    },
    Stale,
    Api {
        status: Option<u16>,
        contains: &'static str,
    },
    Refused(&'static str),
    Exited(&'static str),
}

/// Every Claude fixture: (file, resumed ID, expected outcome).
const CASES: &[(&str, Option<&str>, Expect)] = &[
    (
        "claude-stream-success.jsonl",
        None,
        Expect::Completed {
            text: "I'll run a command to check.\n\nThe command printed `hello-from-tool`.",
            session: Some("d5f45b2a-004a-48c7-ab76-1d9863355e6e"),
        },
    ),
    ("claude-stream-text.jsonl", None, Expect::Completed { text: "Hello! How can I help you today?", session: None }),
    (
        "claude-stream-partial-messages.jsonl",
        None,
        Expect::Completed {
            text: "Hello! How can I help you today?",
            session: Some("b2b26280-5bf2-4c32-9d41-dbd78098c570"),
        },
    ),
    (
        "claude-stream-thinking-partial.jsonl",
        None,
        Expect::Completed {
            text: "Hello! How can I help you today?",
            session: Some("2c4438fd-e53a-4e99-afc9-53cffc8459eb"),
        },
    ),
    ("claude-json-success.json", None, Expect::Completed { text: "", session: None }),
    ("claude-resume-missing.jsonl", Some(ZERO), Expect::Stale),
    ("claude-resume-missing-with-fake-api.jsonl", Some(ZERO), Expect::Stale),
    ("claude-resume-missing-input-stream-json.jsonl", Some(ZERO), Expect::Stale),
    ("claude-resume-missing-text-format.txt", Some(ZERO), Expect::Stale),
    ("claude-resume-missing-json-format.txt", Some(ZERO), Expect::Stale),
    ("claude-resume-empty-transcript.jsonl", Some("22222222-2222-4333-8444-555555555555"), Expect::Stale),
    ("claude-resume-corrupt-transcript.jsonl", Some("33333333-2222-4333-8444-555555555555"), Expect::Stale),
    ("claude-resume-nonuuid-title.jsonl", Some("my-session-name"), Expect::Stale),
    (
        "claude-resume-ok.jsonl",
        Some("d5f45b2a-004a-48c7-ab76-1d9863355e6e"),
        Expect::Completed {
            text: "Hello! How can I help you today?",
            session: Some("d5f45b2a-004a-48c7-ab76-1d9863355e6e"),
        },
    ),
    (
        "claude-resume-ok-other-cwd.jsonl",
        Some("d5f45b2a-004a-48c7-ab76-1d9863355e6e"),
        Expect::Completed {
            text: "Hello! How can I help you today?",
            session: Some("d5f45b2a-004a-48c7-ab76-1d9863355e6e"),
        },
    ),
    (
        "claude-resume-fork-session.jsonl",
        Some("11111111-2222-4333-8444-555555555555"),
        Expect::Completed {
            text: "Hello! How can I help you today?",
            session: Some("c9576f2e-c62f-4794-bc27-164a44a88bfb"),
        },
    ),
    (
        "claude-session-id-new.jsonl",
        None,
        Expect::Completed {
            text: "Hello! How can I help you today?",
            session: Some("11111111-2222-4333-8444-555555555555"),
        },
    ),
    ("claude-session-id-duplicate.txt", None, Expect::Exited("is already in use")),
    ("claude-session-id-invalid.txt", None, Expect::Exited("Invalid session ID")),
    ("claude-continue.jsonl", None, Expect::Completed { text: "Hello! How can I help you today?", session: None }),
    (
        "claude-continue-no-prior-session.jsonl",
        None,
        Expect::Completed { text: "Hello! How can I help you today?", session: None },
    ),
    (
        "claude-input-stream-json-two-turns.jsonl",
        None,
        Expect::Completed {
            text: "Hello! How can I help you today?",
            session: Some("2de0beb3-f0c0-44c1-87f4-e322d5ee181a"),
        },
    ),
    ("claude-error-max-turns.jsonl", None, Expect::Refused("Reached maximum number of turns (1)")),
    ("claude-error-max-budget-usd.jsonl", None, Expect::Refused("Reached maximum budget ($0.001)")),
    (
        "claude-permission-denied.jsonl",
        None,
        Expect::Completed { text: "I was not allowed to write the file.", session: None },
    ),
    ("claude-api-error-529.jsonl", None, Expect::Api { status: Some(529), contains: "API Error: 529 Overloaded" }),
    ("claude-api-error-400.jsonl", None, Expect::Api { status: Some(400), contains: "Input should be a valid list" }),
    (
        "claude-api-overloaded-midstream-then-529.jsonl",
        None,
        Expect::Api { status: Some(529), contains: "API Error: 529" },
    ),
    (
        "claude-api-overloaded-midstream-fallback-ok.jsonl",
        None,
        Expect::Completed { text: "Hello! How can I help you today?", session: None },
    ),
    ("claude-api-unreachable-noretry.jsonl", None, Expect::Api { status: None, contains: "Connection refused" }),
    ("claude-api-unreachable-with-retries.jsonl", None, Expect::Api { status: None, contains: "API Error" }),
    ("claude-not-logged-in.jsonl", None, Expect::Api { status: None, contains: "Not logged in" }),
    ("claude-stream-json-without-verbose.txt", None, Expect::Exited("requires --verbose")),
    ("claude-2.0.77-resume-missing.txt", Some(ZERO), Expect::Stale),
    ("claude-2.0.77-resume-other-cwd.txt", Some("fbcb1918-1109-424d-97c6-4f3eab182f4c"), Expect::Stale),
    (
        "claude-2.0.77-stream-success.jsonl",
        None,
        Expect::Completed {
            text: "I'll run a command to check.\n\nThe command printed `hello-from-tool`.",
            session: Some("fbcb1918-1109-424d-97c6-4f3eab182f4c"),
        },
    ),
    (
        "claude-2.0.77-resume-ok.jsonl",
        Some("fbcb1918-1109-424d-97c6-4f3eab182f4c"),
        Expect::Completed {
            text: "Hello! How can I help you today?",
            session: Some("fbcb1918-1109-424d-97c6-4f3eab182f4c"),
        },
    ),
    ("claude-2.0.77-error-max-turns.jsonl", None, Expect::Refused("maximum number of turns")),
    (
        "claude-2.0.77-api-error-529.jsonl",
        None,
        Expect::Api { status: Some(529), contains: "API Error: 529 Overloaded (overloaded_error)" },
    ),
    ("claude-2.0.77-not-logged-in.jsonl", None, Expect::Api { status: None, contains: "Invalid API key" }),
];

/// Runs the parser the way the adapter does: lines until the first `result`, then the
/// outcome from the exit code and stderr.
pub fn parse(cap: &Capture, resumed: Option<&str>) -> (Vec<Chunk>, Result<Chunk, AssistantError>) {
    let mut parser = ClaudeStream::new(resumed.map(str::to_owned));
    let mut chunks = Vec::new();
    for line in cap.stdout.lines() {
        chunks.extend(parser.line(line));
        if parser.has_result() {
            break;
        }
    }
    let outcome = parser.finish(cap.exit_code, &cap.stderr);
    (chunks, outcome)
}

fn text_of(chunks: &[Chunk]) -> String {
    chunks.iter().filter_map(|c| if let Chunk::Text { text } = c { Some(text.as_str()) } else { None }).collect()
}

#[test]
fn every_claude_fixture_is_covered() {
    let covered: Vec<&str> = CASES.iter().map(|(f, _, _)| *f).collect();
    for file in fixtures_with_prefix("claude-") {
        assert!(covered.contains(&file.as_str()), "fixture {file} has no parser test");
    }
}

#[test]
fn every_claude_fixture_parses_to_its_expected_outcome() {
    for (file, resumed, expect) in CASES {
        let cap = capture(file);
        let (chunks, outcome) = parse(&cap, *resumed);
        let ctx = format!("{file}: chunks {chunks:?}, outcome {outcome:?}");
        let inits: Vec<&str> = chunks
            .iter()
            .filter_map(|c| if let Chunk::SessionStarted { id } = c { Some(id.as_str()) } else { None })
            .collect();
        assert!(inits.len() <= 1, "{ctx}");
        if let Some(i) = chunks.iter().position(|c| matches!(c, Chunk::SessionStarted { .. })) {
            assert_eq!(i, 0, "SessionStarted must come first: {ctx}");
        }
        match expect {
            Expect::Completed { text, session } => {
                let Ok(Chunk::Completed { session_id, usage, .. }) = &outcome else { panic!("{ctx}") };
                assert_eq!(text_of(&chunks), *text, "{ctx}");
                assert_eq!(session_id.as_deref(), inits.first().copied(), "{ctx}");
                if let Some(s) = session {
                    assert_eq!(inits.first().copied(), Some(*s), "{ctx}");
                }
                assert!(usage.is_some_and(|u| u.output_tokens > 0), "{ctx}");
            }
            Expect::Stale => {
                let Err(AssistantError::StaleSession { session_id, detail }) = &outcome else { panic!("{ctx}") };
                assert_eq!(Some(session_id.as_str()), *resumed, "the stale ID is the one asked for: {ctx}");
                assert!(!detail.is_empty(), "{ctx}");
                assert!(inits.is_empty(), "a stale run never reports a session: {ctx}");
            }
            Expect::Api { status, contains } => {
                let Err(AssistantError::Api { message, status: got }) = &outcome else { panic!("{ctx}") };
                assert!(message.contains(contains), "{ctx}");
                assert_eq!(got, status, "{ctx}");
                assert!(!text_of(&chunks).contains("API Error"), "API errors are not reply text: {ctx}");
            }
            Expect::Refused(contains) => {
                let Err(AssistantError::Refused(message)) = &outcome else { panic!("{ctx}") };
                assert!(message.contains(contains), "{ctx}");
            }
            Expect::Exited(contains) => {
                let Err(AssistantError::Exited { code, stderr }) = &outcome else { panic!("{ctx}") };
                assert_eq!(*code, Some(1), "{ctx}");
                assert!(stderr.contains(contains), "{ctx}");
            }
        }
    }
}

#[test]
fn a_failed_resume_is_not_stale_without_resume_or_after_init() {
    // Without --resume the same output is a plain failure.
    let (_, outcome) = parse(&capture("claude-resume-missing.jsonl"), None);
    assert!(matches!(outcome, Err(AssistantError::Exited { .. })), "{outcome:?}");
    // 2.0.77's stderr-only form without --resume.
    let (_, outcome) = parse(&capture("claude-2.0.77-resume-missing.txt"), None);
    assert!(matches!(outcome, Err(AssistantError::Exited { code: Some(1), .. })), "{outcome:?}");
    // An API error in a resumed session (init arrived) keeps the session: not stale.
    let resumed = "676e888b-db2a-4d7a-93fc-b5b3bdb78ac1";
    let (chunks, outcome) = parse(&capture("claude-api-error-529.jsonl"), Some(resumed));
    assert!(matches!(outcome, Err(AssistantError::Api { status: Some(529), .. })), "{outcome:?}");
    assert_eq!(chunks.first(), Some(&Chunk::SessionStarted { id: resumed.into() }));
}

#[test]
fn tool_calls_and_results_are_reported_in_order() {
    let (chunks, outcome) = parse(&capture("claude-stream-success.jsonl"), None);
    let kinds: Vec<&str> = chunks
        .iter()
        .map(|c| match c {
            Chunk::SessionStarted { .. } => "session",
            Chunk::Text { .. } => "text",
            Chunk::Thinking { .. } => "thinking",
            Chunk::ToolUse { .. } => "tool_use",
            Chunk::ToolResult { .. } => "tool_result",
            Chunk::Completed { .. } => "completed",
        })
        .collect();
    assert_eq!(kinds, ["session", "text", "tool_use", "tool_result", "text"]);
    let Chunk::ToolUse { id, name, input } = &chunks[2] else { panic!() };
    assert_eq!((id.as_str(), name.as_str()), ("toolu_014a2bce5f6a44493b881102c4", "Bash"));
    assert_eq!(input["command"], "echo hello-from-tool");
    assert_eq!(chunks[3], Chunk::ToolResult { id: id.clone(), is_error: false, output: "hello-from-tool".into() });
    let Ok(Chunk::Completed { usage, cost_usd, duration_ms, .. }) = outcome else { panic!() };
    assert_eq!(usage, Some(Usage { input_tokens: 4190, output_tokens: 30 }));
    assert_eq!(cost_usd, Some(0.01736));
    assert_eq!(duration_ms, Some(557));
}

#[test]
fn partial_messages_stream_text_and_thinking_once() {
    let (chunks, _) = parse(&capture("claude-stream-partial-messages.jsonl"), None);
    let texts = chunks.iter().filter(|c| matches!(c, Chunk::Text { .. })).count();
    assert!(texts >= 7, "deltas arrive one by one: {chunks:?}");
    let (chunks, _) = parse(&capture("claude-stream-thinking-partial.jsonl"), None);
    let thinking: String = chunks
        .iter()
        .filter_map(|c| if let Chunk::Thinking { text } = c { Some(text.as_str()) } else { None })
        .collect();
    assert_eq!(thinking, "The user wants a short greeting. I'll keep it brief.");
    assert_eq!(text_of(&chunks), "Hello! How can I help you today?");
}

#[test]
fn permission_denied_tool_results_are_errors() {
    let (chunks, _) = parse(&capture("claude-permission-denied.jsonl"), None);
    assert!(
        chunks
            .iter()
            .any(|c| matches!(c, Chunk::ToolResult { is_error: true, output, .. } if output.contains("permissions"))),
        "{chunks:?}"
    );
}

#[test]
fn garbage_and_unknown_lines_are_skipped() {
    let mut parser = ClaudeStream::new(None);
    assert!(parser.line("not json at all").is_empty());
    assert!(parser.line("[1,2,3]").is_empty());
    assert!(parser.line(r#"{"type":"brand_new_type","x":1}"#).is_empty());
    assert!(parser.line(r#"{"type":"assistant"}"#).is_empty());
    assert!(parser.line(r#"{"type":"system","subtype":"init"}"#).is_empty());
    let outcome = parser.finish(Some(0), "");
    assert!(matches!(outcome, Err(AssistantError::Protocol(_))), "{outcome:?}");
}
