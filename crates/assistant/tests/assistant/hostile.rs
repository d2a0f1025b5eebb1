//! Property tests: hostile assistant output — arbitrary bytes, truncated JSON of real
//! fixture lines, huge lines, invalid UTF-8 (as the line reader decodes it), NUL — never
//! panics a parser, and junk lines between real ones change nothing: the run parses to
//! the same chunks and the same outcome as without them.

use parley_assistant::claude::ClaudeStream;
use parley_assistant::codex::CodexStream;
use parley_assistant::openai::ResponsesStream;
use parley_assistant::openai_chat::ChatStream;
use parley_assistant::{AssistantError, Chunk, NUL_REPLACEMENT};
use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::{Value, json};

use crate::{Capture, capture, fixtures_with_prefix};

/// The stdout lines of every `prefix` capture.
fn fixture_lines(prefix: &str) -> Vec<(String, Capture)> {
    fixtures_with_prefix(prefix).into_iter().map(|f| (f.clone(), capture(&f))).collect()
}

/// Every non-empty stdout line of the `prefix` captures.
fn all_lines(prefix: &str) -> Vec<String> {
    fixture_lines(prefix)
        .into_iter()
        .flat_map(|(_, c)| c.stdout.lines().map(str::to_owned).collect::<Vec<_>>())
        .filter(|l| !l.trim().is_empty())
        .collect()
}

/// Bytes as the line reader hands them over: lossy UTF-8.
fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// True when `line` is a JSON object, i.e. not junk for the parsers.
fn is_json_object(line: &str) -> bool {
    matches!(serde_json::from_str::<Value>(line.trim()), Ok(Value::Object(_)))
}

/// A line that is not a JSON object, built from `lines` (real fixture lines): arbitrary
/// bytes, a strict prefix of a real line, a real line with a raw NUL or invalid UTF-8
/// byte spliced in, or NUL bytes alone.
fn junk_line(lines: Vec<String>) -> impl Strategy<Value = String> {
    let cut = lines.clone();
    let splice = lines;
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..512).prop_map(|b| lossy(&b)),
        (any::<Index>(), any::<Index>()).prop_map(move |(i, at)| {
            let line = i.get(&cut).trim();
            let bytes = line.as_bytes();
            lossy(&bytes[..at.index(bytes.len().max(1))])
        }),
        (any::<Index>(), any::<Index>(), prop_oneof![Just(0u8), Just(0xff), Just(0xc3), Just(b'\n')]).prop_map(
            move |(i, at, byte)| {
                let mut bytes = i.get(&splice).clone().into_bytes();
                let at = at.index(bytes.len() + 1);
                bytes.insert(at, byte);
                lossy(&bytes)
            }
        ),
        (1usize..64).prop_map(|n| "\0".repeat(n)),
    ]
    .prop_filter("not a JSON object", |l| !is_json_object(l))
}

/// `lines` with `junk` inserted at the given positions.
fn interleave(lines: &[&str], junk: &[(Index, String)]) -> Vec<String> {
    let mut out: Vec<String> = lines.iter().map(|l| (*l).to_owned()).collect();
    for (at, line) in junk {
        let at = at.index(out.len() + 1);
        out.insert(at, line.clone());
    }
    out
}

/// A Claude run over `lines`: its chunks and its outcome.
fn claude_run(lines: &[String], exit: Option<i32>, stderr: &str) -> (Vec<Chunk>, Result<Chunk, AssistantError>) {
    let mut parser = ClaudeStream::new(None);
    let chunks = lines.iter().flat_map(|l| parser.line(l)).collect();
    (chunks, parser.finish(exit, stderr))
}

/// A Codex run over `lines`: its chunks (up to the first error) and its outcome.
fn codex_run(lines: &[String], exit: Option<i32>, stderr: &str) -> (Vec<Chunk>, Result<Chunk, AssistantError>) {
    let mut parser = CodexStream::new(None);
    let mut chunks = Vec::new();
    for line in lines {
        match parser.line(line) {
            Ok(c) => chunks.extend(c),
            Err(e) => return (chunks, Err(e)),
        }
    }
    (chunks, parser.finish(exit, stderr))
}

/// A CLI parser's run over lines, with the exit code and stderr: its chunks and outcome.
type CliRun = fn(&[String], Option<i32>, &str) -> (Vec<Chunk>, Result<Chunk, AssistantError>);

/// A `prefix` capture (an index into [`fixture_lines`]) and up to seven junk lines to
/// insert into it, at the given positions.
fn junked(prefix: &str) -> impl Strategy<Value = (Index, Vec<(Index, String)>)> {
    (any::<Index>(), proptest::collection::vec((any::<Index>(), junk_line(all_lines(prefix))), 0..8))
}

/// `run` over the `prefix` capture `fixture` with `junk` interleaved equals `run` over
/// the capture alone.
fn junk_changes_nothing(
    prefix: &str,
    run: CliRun,
    fixture: &Index,
    junk: &[(Index, String)],
) -> Result<(), TestCaseError> {
    let captures = fixture_lines(prefix);
    let (_, c) = fixture.get(&captures);
    let clean: Vec<&str> = c.stdout.lines().collect();
    let expected = run(&clean.iter().map(|l| (*l).to_owned()).collect::<Vec<_>>(), c.exit_code, &c.stderr);
    let dirty = interleave(&clean, junk);
    prop_assert_eq!(run(&dirty, c.exit_code, &c.stderr), expected);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn claude_junk_lines_between_real_ones_change_nothing((fixture, junk) in junked("claude-")) {
        junk_changes_nothing("claude-", claude_run, &fixture, &junk)?;
    }

    #[test]
    fn codex_junk_lines_between_real_ones_change_nothing((fixture, junk) in junked("codex-")) {
        junk_changes_nothing("codex-", codex_run, &fixture, &junk)?;
    }

    #[test]
    fn arbitrary_lines_and_exits_never_panic_the_cli_parsers(
        lines in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..256), 0..16),
        exit in any::<Option<i32>>(),
        stderr in proptest::collection::vec(any::<u8>(), 0..256),
        resumed in any::<bool>(),
    ) {
        let lines: Vec<String> = lines.iter().map(|l| lossy(l)).collect();
        let stderr = lossy(&stderr);
        let resume = resumed.then(|| "0f0e7b8c-0000-4000-8000-000000000001".to_owned());
        let mut claude = ClaudeStream::new(resume.clone());
        let mut codex = CodexStream::new(resume);
        for line in &lines {
            claude.line(line);
            let _ = codex.line(line);
        }
        let _ = claude.finish(exit, &stderr);
        let _ = codex.finish(exit, &stderr);
    }

    /// Real lines with one string value replaced by a hostile one (NUL, U+FFFD, huge,
    /// odd Unicode) or by a value of another type.
    #[test]
    fn real_lines_with_hostile_values_never_panic_the_cli_parsers(
        claude_line in any::<Index>(),
        codex_line in any::<Index>(),
        leaf in any::<Index>(),
        value in hostile_value(),
    ) {
        let claude_lines = all_lines("claude-");
        let codex_lines = all_lines("codex-");
        let mut claude = ClaudeStream::new(None);
        let mut codex = CodexStream::new(None);
        if let Some(line) = with_leaf_replaced(claude_line.get(&claude_lines).as_str(), leaf, &value) {
            for chunk in claude.line(&line) {
                assert_storable(chunk);
            }
        }
        if let Some(line) = with_leaf_replaced(codex_line.get(&codex_lines).as_str(), leaf, &value) {
            for chunk in codex.line(&line).unwrap_or_default() {
                assert_storable(chunk);
            }
        }
        let _ = claude.finish(Some(0), "\0");
        let _ = codex.finish(Some(0), "\0");
    }

    #[test]
    fn arbitrary_event_data_never_panics_the_http_parsers(
        events in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..256), 0..16),
    ) {
        let mut responses = ResponsesStream::new(Some("resp_1".into()));
        let mut chat = ChatStream::default();
        for data in &events {
            let data = lossy(data);
            let _ = responses.event(&data);
            let _ = chat.data(&data);
        }
        let _ = responses.finish();
        let _ = chat.finish();
    }

    #[test]
    fn without_nul_leaves_no_nul_and_keeps_clean_chunks(chunk in any_chunk()) {
        let clean = chunk.clone().without_nul();
        let json = serde_json::to_string(&clean).unwrap_or_default();
        prop_assert!(!json.contains("\\u0000"), "{}", json);
        let had_nul = serde_json::to_string(&chunk).unwrap_or_default().contains("\\u0000");
        prop_assert_eq!(clean == chunk, !had_nul);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(8))]

    /// Megabyte lines: a real text delta grown to 1 MB passes whole; 1 MB of junk is skipped.
    #[test]
    fn huge_lines_parse_or_are_skipped(fill in "[\\x00-\\x7fé😀]{1,4}", junk in any::<u8>()) {
        let text: String = fill.chars().cycle().take(1 << 20).collect();
        let delta = json!({
            "type": "stream_event",
            "event": { "type": "content_block_delta", "delta": { "type": "text_delta", "text": text } },
        });
        let mut claude = ClaudeStream::new(None);
        prop_assert_eq!(claude.line(&delta.to_string()), vec![Chunk::Text { text: text.clone() }]);
        prop_assert_eq!(claude.line(&lossy(&vec![junk; 1 << 20])), vec![]);
        let item = json!({ "type": "item.completed", "item": { "id": "i", "type": "agent_message", "text": text } });
        let mut codex = CodexStream::new(None);
        prop_assert_eq!(codex.line(&item.to_string()), Ok(vec![Chunk::Text { text }]));
        prop_assert_eq!(codex.line(&lossy(&vec![junk; 1 << 20])), Ok(vec![]));
    }
}

/// A hostile JSON value for a string field.
fn hostile_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        ".*".prop_map(Value::String),
        "[\\x00\u{FFFD}a ]{0,16}".prop_map(Value::String),
        (0usize..200_000).prop_map(|n| Value::String("\0".repeat(n % 7) + &"z".repeat(n))),
        Just(Value::Null),
        Just(json!(-1)),
        Just(json!(1e308)),
        Just(json!([])),
        Just(json!({ "type": "text", "text": "\0" })),
    ]
}

/// `line` (a JSON object) with its `leaf`-th string value replaced by `value`; `None`
/// when the line is not JSON or has no string leaf.
fn with_leaf_replaced(line: &str, leaf: Index, value: &Value) -> Option<String> {
    fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
        match v {
            Value::String(_) => out.push(at),
            Value::Array(items) => items.iter().enumerate().for_each(|(i, x)| pointers(x, format!("{at}/{i}"), out)),
            Value::Object(map) => {
                map.iter()
                    .for_each(|(k, x)| pointers(x, format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")), out));
            }
            _ => {}
        }
    }
    let mut v: Value = serde_json::from_str(line).ok()?;
    let mut leaves = Vec::new();
    pointers(&v, String::new(), &mut leaves);
    if leaves.is_empty() {
        return None;
    }
    *v.pointer_mut(leaf.get(&leaves).as_str())? = value.clone();
    Some(v.to_string())
}

/// A chunk after [`Chunk::without_nul`] holds no NUL in any string (key or value): what
/// PostgreSQL's `text` and `jsonb` refuse. Checked on the parsed values, not on the JSON
/// text, where a string holding the six characters `\u0000` (a backslash, then `u0000`)
/// looks like an escaped NUL but is storable.
fn assert_storable(chunk: Chunk) {
    fn has_nul(v: &Value) -> bool {
        match v {
            Value::String(s) => s.contains('\0'),
            Value::Array(items) => items.iter().any(has_nul),
            Value::Object(map) => map.iter().any(|(k, x)| k.contains('\0') || has_nul(x)),
            _ => false,
        }
    }
    let value = serde_json::to_value(chunk.without_nul()).unwrap_or_default();
    assert!(!has_nul(&value), "{value}");
}

/// Any chunk, with strings drawn mostly from NUL, U+FFFD and a few letters.
fn any_chunk() -> impl Strategy<Value = Chunk> {
    let s = || "[\\x00\u{FFFD}ab]{0,8}";
    let leaf = prop_oneof![s().prop_map(Value::String), any::<i64>().prop_map(|n| json!(n)), Just(Value::Null)];
    let input = leaf.prop_recursive(3, 24, 4, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map(s(), inner, 0..4).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    });
    prop_oneof![
        s().prop_map(|id| Chunk::SessionStarted { id }),
        s().prop_map(|text| Chunk::Text { text }),
        s().prop_map(|text| Chunk::Thinking { text }),
        (s(), s(), input).prop_map(|(id, name, input)| Chunk::ToolUse { id, name, input }),
        (s(), any::<bool>(), s()).prop_map(|(id, is_error, output)| Chunk::ToolResult { id, is_error, output }),
        proptest::option::of(s()).prop_map(|session_id| Chunk::Completed {
            session_id,
            usage: None,
            cost_usd: None,
            duration_ms: Some(1),
        }),
    ]
}

#[test]
fn without_nul_replaces_nul_in_errors_too() {
    let err = AssistantError::Exited { code: Some(1), stderr: "a\0b".into() }.without_nul();
    assert_eq!(err, AssistantError::Exited { code: Some(1), stderr: format!("a{NUL_REPLACEMENT}b") });
    let err = AssistantError::StaleSession { session_id: "\0".into(), detail: "\0".into() }.without_nul();
    assert!(!err.to_string().contains('\0'), "{err}");
    for err in [AssistantError::Api { message: "\0".into(), status: None }, AssistantError::Protocol("\0".into())] {
        assert!(!err.without_nul().to_string().contains('\0'));
    }
}
