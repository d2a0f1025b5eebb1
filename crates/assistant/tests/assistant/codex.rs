//! The Codex `exec --json` parser over every `codex-*` fixture (codex-cli 0.169.0 real
//! captures, plus two reconstructed from the codex docs and source).

use parley_assistant::codex::CodexStream;
use parley_assistant::{AssistantError, Chunk, Usage};

use crate::{Capture, capture, fixtures_with_prefix};

#[derive(Debug)]
enum Expect {
    Completed {
        text: &'static str,
        thread: &'static str,
    },
    Stale,
    Api(&'static str),
    Exited(&'static str),
    /// Killed before the end (the offline capture): no result.
    Unfinished,
}

const CASES: &[(&str, Option<&str>, Expect)] = &[
    (
        "codex-exec-success.jsonl",
        None,
        Expect::Completed {
            text: "The command printed `hello-from-tool`.",
            thread: "01a1fb60-8aed-7be3-b168-4fa6180d713f",
        },
    ),
    (
        "codex-exec-text.jsonl",
        None,
        Expect::Completed { text: "Hello! How can I help you today?", thread: "01a1fb60-8129-7a61-bff4-4c332c649b3d" },
    ),
    (
        "codex-exec-file-change.jsonl",
        None,
        Expect::Completed { text: "Created hello.txt.", thread: "01a1fb60-a9fb-7440-9700-b4bc61fb2e74" },
    ),
    (
        "codex-exec-resume-ok.jsonl",
        Some("01a1fb60-8aed-7be3-b168-4fa6180d713f"),
        Expect::Completed { text: "Hello! How can I help you today?", thread: "01a1fb60-8aed-7be3-b168-4fa6180d713f" },
    ),
    (
        "codex-exec-resume-ok-other-cwd.jsonl",
        Some("01a1fb60-8aed-7be3-b168-4fa6180d713f"),
        Expect::Completed { text: "Hello! How can I help you today?", thread: "01a1fb60-8aed-7be3-b168-4fa6180d713f" },
    ),
    (
        "codex-exec-docs-sample.reconstructed.jsonl",
        None,
        Expect::Completed {
            text: "Yep — there’s a `README.md` in the repository root.",
            thread: "0199a213-81c0-7800-8aa1-bbab2a035a53",
        },
    ),
    (
        "codex-exec-mcp-tool-call.reconstructed.jsonl",
        None,
        Expect::Completed {
            text: "The echo tool replied `echo: ping`.",
            thread: "0199a213-81c0-7800-8aa1-bbab2a035a53",
        },
    ),
    ("codex-resume-missing.txt", Some("00000000-0000-0000-0000-000000000000"), Expect::Stale),
    ("codex-resume-deleted-rollout.txt", Some("01a1fb60-8129-7a61-bff4-4c332c649b3d"), Expect::Stale),
    ("codex-resume-corrupt-rollout.txt", Some("01a1fb60-8858-75e2-b443-e704c8a41807"), Expect::Stale),
    ("codex-resume-rollout-without-metadata.txt", Some("01a22cf9-741d-7630-8257-d2f317fb0c32"), Expect::Stale),
    ("codex-resume-missing-offline-nokey.txt", Some("00000000-0000-0000-0000-000000000000"), Expect::Stale),
    (
        "codex-resume-missing-no-skip-git.txt",
        Some("00000000-0000-0000-0000-000000000000"),
        Expect::Exited("Not inside a trusted directory"),
    ),
    ("codex-resume-unknown-name-starts-new-thread.jsonl", Some("not-a-uuid-name"), Expect::Stale),
    ("codex-turn-failed-http400.jsonl", None, Expect::Api("Invalid 'input[0].content': string too long.")),
    (
        "codex-turn-failed-previous-response-not-found.jsonl",
        None,
        Expect::Api("Previous response with id 'resp_00000000000000000000000000000000' not found."),
    ),
    ("codex-turn-failed-response-failed.jsonl", None, Expect::Api("The model produced invalid content.")),
    ("codex-turn-failed-stream-closed.jsonl", None, Expect::Api("stream closed before response.completed")),
    ("codex-turn-failed-http503.jsonl", None, Expect::Api("Selected model is at capacity.")),
    ("codex-offline-reconnecting.jsonl", None, Expect::Unfinished),
];

/// Runs the parser as the adapter does; a stale `thread.started` ends it early.
fn parse(cap: &Capture, resumed: Option<&str>) -> (Vec<Chunk>, Result<Chunk, AssistantError>) {
    let mut parser = CodexStream::new(resumed.map(str::to_owned));
    let mut chunks = Vec::new();
    for line in cap.stdout.lines() {
        match parser.line(line) {
            Ok(c) => chunks.extend(c),
            Err(e) => return (chunks, Err(e)),
        }
        if parser.is_done() {
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
fn every_codex_fixture_is_covered() {
    let covered: Vec<&str> = CASES.iter().map(|(f, _, _)| *f).collect();
    for file in fixtures_with_prefix("codex-") {
        if file.starts_with("codex-app-server-") {
            // Replayed by the unit tests of `parley_assistant::codex::app_server`, which
            // check that they cover each.
            continue;
        }
        assert!(covered.contains(&file.as_str()), "fixture {file} has no parser test");
    }
}

#[test]
fn every_codex_fixture_parses_to_its_expected_outcome() {
    for (file, resumed, expect) in CASES {
        let cap = capture(file);
        let (chunks, outcome) = parse(&cap, *resumed);
        let ctx = format!("{file}: chunks {chunks:?}, outcome {outcome:?}");
        match expect {
            Expect::Completed { text, thread } => {
                let Ok(Chunk::Completed { session_id, usage, .. }) = &outcome else { panic!("{ctx}") };
                assert_eq!(text_of(&chunks), *text, "{ctx}");
                assert_eq!(session_id.as_deref(), Some(*thread), "{ctx}");
                assert_eq!(chunks.first(), Some(&Chunk::SessionStarted { id: (*thread).into() }), "{ctx}");
                assert!(usage.is_some_and(|u| u.input_tokens > 0), "{ctx}");
            }
            Expect::Stale => {
                let Err(AssistantError::StaleSession { session_id, detail }) = &outcome else { panic!("{ctx}") };
                assert_eq!(Some(session_id.as_str()), *resumed, "{ctx}");
                assert!(!detail.is_empty(), "{ctx}");
                assert!(!chunks.iter().any(|c| matches!(c, Chunk::SessionStarted { .. })), "{ctx}");
            }
            Expect::Api(contains) => {
                let Err(AssistantError::Api { message, .. }) = &outcome else { panic!("{ctx}") };
                assert!(message.contains(contains), "{ctx}");
                assert!(!message.starts_with('{'), "the raw upstream body is unwrapped: {ctx}");
            }
            Expect::Exited(contains) => {
                let Err(AssistantError::Exited { stderr, .. }) = &outcome else { panic!("{ctx}") };
                assert!(stderr.contains(contains), "{ctx}");
            }
            Expect::Unfinished => {
                // "Reconnecting..." errors are progress, not the failure: the run was
                // killed (timeout 60 s, exit 124) before any result.
                let Err(AssistantError::Exited { code, .. }) = &outcome else { panic!("{ctx}") };
                assert_eq!(*code, Some(124), "{ctx}");
            }
        }
    }
}

#[test]
fn usage_is_the_threads_running_total_as_reported() {
    let (_, first) = parse(&capture("codex-exec-success.jsonl"), None);
    let (_, resumed) = parse(&capture("codex-exec-resume-ok.jsonl"), Some("01a1fb60-8aed-7be3-b168-4fa6180d713f"));
    let usage = |o: &Result<Chunk, AssistantError>| match o {
        Ok(Chunk::Completed { usage, .. }) => *usage,
        _ => None,
    };
    assert_eq!(usage(&first), Some(Usage { input_tokens: 4690, output_tokens: 114 }));
    // Stored as reported (the CLI's thread total), not added to the previous turn's.
    assert_eq!(usage(&resumed), Some(Usage { input_tokens: 7035, output_tokens: 171 }));
}

#[test]
fn commands_files_and_mcp_calls_become_tool_chunks() {
    let (chunks, _) = parse(&capture("codex-exec-success.jsonl"), None);
    assert!(chunks.contains(&Chunk::Thinking {
        text: "**Planning a quick check**\n\nI'll run a shell command to verify.".into()
    }));
    let uses: Vec<&Chunk> = chunks.iter().filter(|c| matches!(c, Chunk::ToolUse { .. })).collect();
    assert_eq!(uses.len(), 1, "started and completed items are one tool call: {chunks:?}");
    assert!(chunks.contains(&Chunk::ToolResult {
        id: "item_1".into(),
        is_error: false,
        output: "hello-from-tool\n".into()
    }));

    let (chunks, _) = parse(&capture("codex-exec-file-change.jsonl"), None);
    assert!(
        chunks.iter().any(
            |c| matches!(c, Chunk::ToolResult { output, .. } if output == "add /home/dev/capture/work-codex/hello.txt")
        ),
        "{chunks:?}"
    );

    let (chunks, _) = parse(&capture("codex-exec-mcp-tool-call.reconstructed.jsonl"), None);
    assert!(chunks.iter().any(|c| matches!(c, Chunk::ToolUse { name, .. } if name == "echo.echo")), "{chunks:?}");
    assert!(
        chunks.iter().any(|c| matches!(c, Chunk::ToolResult { output, is_error: false, .. } if output == "echo: ping")),
        "{chunks:?}"
    );
}
