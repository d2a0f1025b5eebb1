//! Hostile assistant output against real PostgreSQL: NUL characters (which PostgreSQL
//! `text` and `jsonb` cannot hold), text decoded from broken output lines, a 1 MB chunk
//! and many small ones. Every turn must end in a final status with the user message
//! stored, the reply (or its partial) stored, and its events consistent: one
//! `turn_started`, one final event last, and `text` events adding up to the stored reply.
//! An assistant that panics mid-stream fails only its turn, and a turn whose
//! conversation's run lock is taken waits (then is requeued) until it is free.
//!
//! The replica is started by `parley_server::launch`, as `parley serve` starts one; the
//! tests drive its orchestrator directly.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use parley_assistant::claude::ClaudeStream;
use parley_assistant::{Assistant, AssistantError, Chunk, RunRequest};
use parley_db::conversation::{self, NewConversation};
use parley_db::event::{self, Event};
use parley_db::message::{self, Message};
use parley_db::turn::{self, Turn};
use parley_orchestrator::{Config, Ingested, Orchestrator, PostMessage};
use parley_server::launch::{Launched, Settings};
use parley_test_support::TestDb;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// One megabyte of reply text in a single chunk.
const HUGE: usize = 1 << 20;

/// An assistant that plays a script chosen by the message it is asked to answer.
struct Scripted;

/// How many times the scripted assistant was asked to answer "locked out".
static LOCKED_OUT_RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The script for `message`: the chunks (or the error) the run yields, in order.
fn script(message: &str) -> Vec<Result<Chunk, AssistantError>> {
    let text = |t: &str| Ok(Chunk::Text { text: t.to_owned() });
    let completed = Ok(Chunk::Completed { session_id: None, usage: None, cost_usd: None, duration_ms: None });
    match message {
        "nul everywhere" => vec![
            Ok(Chunk::SessionStarted { id: "sess\0ion".into() }),
            Ok(Chunk::Thinking { text: "think\0ing".into() }),
            text("before\0after"),
            Ok(Chunk::ToolUse {
                id: "tool\0-1".into(),
                name: "Ba\0sh".into(),
                input: json!({ "command": "printf '\0'", "ke\0y": ["\0", { "\0": "\0" }] }),
            }),
            Ok(Chunk::ToolResult { id: "tool\0-1".into(), is_error: false, output: "\0\0\0".into() }),
            text("\0"),
            Ok(Chunk::Completed {
                session_id: Some("sess\0ion".into()),
                usage: None,
                cost_usd: None,
                duration_ms: None,
            }),
        ],
        "nul then error" => vec![
            text("partial\0reply"),
            Err(AssistantError::Exited { code: Some(1), stderr: "panicked at \0 somewhere".into() }),
        ],
        "huge" => vec![text(&"x".repeat(HUGE)), text(&"é".repeat(1000)), completed],
        "many small" => {
            let mut chunks: Vec<_> = (0..2000).map(|i| text(&format!("{}", i % 10))).collect();
            chunks.push(completed);
            chunks
        }
        "claude lines" => claude_lines(),
        other => vec![Err(AssistantError::Protocol(format!("no script for {other:?}")))],
    }
}

/// Hostile Claude Code stream-json output, through the real parser: a `\u0000` escape
/// in text, truncated JSON, bytes that were not UTF-8 (already replaced by the line
/// reader), a line of NUL bytes, a 1 MB text delta, and a result line.
fn claude_lines() -> Vec<Result<Chunk, AssistantError>> {
    let big = "y".repeat(HUGE);
    let lines = [
        r#"{"type":"system","subtype":"init","session_id":"0f0e7b8c-0000-4000-8000-000000000001"}"#.to_owned(),
        r#"{"type":"assistant","message":{"id":"m1","content":[{"type":"text","text":"nul:\u0000:end"}]}}"#.to_owned(),
        r#"{"type":"assistant","message":{"id":"m2","content":[{"type":"text","text":"trunc"#.to_owned(),
        String::from_utf8_lossy(b"{\"type\":\"assistant\",\"message\":{\"id\":\"m3\",\"content\":[{\"type\":\"text\",\"text\":\"bad \xff\xfe utf8\"}]}}").into_owned(),
        "\0\0\0\0".to_owned(),
        format!(
            r#"{{"type":"stream_event","event":{{"type":"content_block_delta","delta":{{"type":"text_delta","text":"{big}"}}}}}}"#
        ),
        r#"{"type":"result","subtype":"success","is_error":false,"session_id":"0f0e7b8c-0000-4000-8000-000000000001"}"#.to_owned(),
    ];
    let mut parser = ClaudeStream::new(None);
    let mut out: Vec<Result<Chunk, AssistantError>> = lines.iter().flat_map(|l| parser.line(l)).map(Ok).collect();
    out.push(parser.finish(Some(0), ""));
    out
}

impl Assistant for Scripted {
    fn name(&self) -> &str {
        "scripted"
    }

    fn run(&self, request: RunRequest) -> BoxStream<'static, Result<Chunk, AssistantError>> {
        if request.message == "locked out" {
            LOCKED_OUT_RUNS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            return futures::stream::iter(script("many small")).boxed();
        }
        if request.message == "panic midway" {
            // Some text, then a bug in the adapter.
            let text = futures::stream::iter([Ok(Chunk::Text { text: "half an ans".into() })]);
            return text.chain(futures::stream::poll_fn(|_| panic!("the scripted assistant has a bug"))).boxed();
        }
        futures::stream::iter(script(&request.message)).boxed()
    }
}

struct App {
    db: TestDb,
    orchestrator: Orchestrator,
    shutdown: CancellationToken,
    launched: Launched,
}

impl App {
    async fn start() -> Self {
        Self::start_with_lease(Config::default().lease).await
    }

    async fn start_with_lease(lease: Duration) -> Self {
        let db = TestDb::new().await;
        let config = Config {
            worker_id: format!("hostile-{}", Uuid::new_v4()),
            workers: 2,
            idle_poll: Duration::from_millis(100),
            shutdown_grace: Duration::from_secs(2),
            default_assistant: "scripted".into(),
            lease,
            ..Config::default()
        };
        let settings = Settings { assistants: vec![Arc::new(Scripted)], ..Settings::new(db.config.clone(), config) };
        let shutdown = CancellationToken::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let launched =
            parley_server::launch(settings, listener, shutdown.clone().cancelled_owned()).await.expect("launch");
        Self { db, orchestrator: launched.orchestrator().clone(), shutdown, launched }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.launched.stopped())
            .await
            .expect("workers stop")
            .expect("stopped");
        drop(self.db);
    }

    /// Posts `text` to a new conversation and waits for its turn to end.
    async fn run(&self, text: &str) -> Finished {
        let conversation_id = self.conversation(text).await;
        self.run_in(conversation_id, text).await
    }

    /// Creates a conversation with the scripted assistant.
    async fn conversation(&self, title: &str) -> Uuid {
        let client = self.db.pool.get().await.expect("client");
        conversation::create(&client, &NewConversation::web("local", title, "scripted"))
            .await
            .expect("conversation")
            .conversation_id
    }

    /// Posts `text` to a conversation and waits for its turn to end.
    async fn run_in(&self, conversation_id: Uuid, text: &str) -> Finished {
        let client = self.db.pool.get().await.expect("client");
        let posted = self
            .orchestrator
            .post_message(PostMessage {
                conversation_id,
                text: text.into(),
                idempotency_key: None,
                metadata: json!({}),
                owner: None,
            })
            .await
            .expect("posted");
        let Ingested::Turn { turn_id, message_id, .. } = posted else { panic!("not a turn: {posted:?}") };
        let mut turn = turn::get(&client, turn_id).await.expect("turn");
        for _ in 0..300 {
            if !matches!(turn.status.as_ref(), "queued" | "running") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            turn = turn::get(&client, turn_id).await.expect("turn");
        }
        assert!(
            !matches!(turn.status.as_ref(), "queued" | "running"),
            "the turn for {text:?} never finished: {} after {} attempt(s)",
            turn.status,
            turn.attempt
        );
        let messages = message::list(&client, conversation_id, 0, 100).await.expect("messages");
        let events: Vec<Event> = event::list_after(&client, conversation_id, 0, 10_000)
            .await
            .expect("events")
            .into_iter()
            .filter(|e| e.turn_id == Some(turn_id))
            .collect();
        Finished { turn, user_message_id: message_id, messages, events }
    }
}

/// A finished turn as stored.
struct Finished {
    turn: Turn,
    user_message_id: i64,
    messages: Vec<Message>,
    events: Vec<Event>,
}

impl Finished {
    /// The stored assistant reply, after checking the turn's rows are consistent: the
    /// user message kept, one attempt, one `turn_started`, the final event last and
    /// matching the status, the `text` events adding up to the stored reply.
    fn checked_reply(&self, status: &str) -> Option<&Message> {
        assert_eq!(self.turn.status.as_ref(), status, "turn error: {:?}", self.turn.error);
        assert_eq!(self.turn.attempt, 1, "the turn ran once");
        let user = self.messages.iter().find(|m| m.message_id == self.user_message_id).expect("user message stored");
        assert_eq!(user.role.as_ref(), "user");
        let kinds: Vec<&str> = self.events.iter().map(|e| e.kind.as_ref()).collect();
        assert_eq!(kinds.first(), Some(&"turn_started"), "{kinds:?}");
        assert_eq!(kinds.iter().filter(|k| **k == "turn_started").count(), 1, "{kinds:?}");
        let last = format!("turn_{status}");
        assert_eq!(kinds.last(), Some(&last.as_str()), "{kinds:?}");
        assert!(self.events.windows(2).all(|w| w[0].seq < w[1].seq), "event numbers increase");
        assert!(self.events.iter().all(|e| e.turn_id == Some(self.turn.turn_id)));
        let streamed: String =
            self.events.iter().filter(|e| e.kind.as_ref() == "text").filter_map(|e| e.data["text"].as_str()).collect();
        let reply = self.messages.iter().find(|m| m.role.as_ref() == "assistant");
        assert_eq!(reply.map_or("", |m| m.content.as_str()), streamed, "stored reply = streamed text");
        for m in &self.messages {
            assert!(!m.content.contains('\0'), "message {} holds NUL", m.message_id);
        }
        reply
    }
}

fn event<'a>(finished: &'a Finished, kind: &str) -> &'a Value {
    &finished.events.iter().find(|e| e.kind.as_ref() == kind).unwrap_or_else(|| panic!("no {kind} event")).data
}

#[tokio::test]
async fn nul_in_every_chunk_is_stored_as_a_replacement_character() {
    let app = App::start().await;
    let done = app.run("nul everywhere").await;
    let reply = done.checked_reply("completed").expect("reply stored");
    assert_eq!(reply.content, "before\u{FFFD}after\u{FFFD}");
    assert_eq!(event(&done, "thinking")["text"], "think\u{FFFD}ing");
    let tool = event(&done, "tool_use");
    assert_eq!(tool["name"], "Ba\u{FFFD}sh");
    assert_eq!(tool["input"]["ke\u{FFFD}y"], json!(["\u{FFFD}", { "\u{FFFD}": "\u{FFFD}" }]));
    assert_eq!(event(&done, "tool_result")["output"], "\u{FFFD}\u{FFFD}\u{FFFD}");
    let client = app.db.pool.get().await.expect("client");
    let session_id = done.turn.session_id.expect("turn has a session");
    let session = parley_db::session::get(&client, session_id).await.expect("session");
    assert_eq!(session.assistant_session_id.as_deref(), Some("sess\u{FFFD}ion"));
    drop(client);
    app.stop().await;
}

#[tokio::test]
async fn nul_in_an_error_fails_the_turn_cleanly_with_the_partial_reply() {
    let app = App::start().await;
    let done = app.run("nul then error").await;
    let partial = done.checked_reply("failed").expect("partial reply stored");
    assert_eq!(partial.content, "partial\u{FFFD}reply");
    assert_eq!(partial.metadata["incomplete"], true);
    let error = done.turn.error.as_deref().expect("turn error");
    assert!(error.contains("panicked at \u{FFFD} somewhere"), "{error}");
    assert_eq!(event(&done, "turn_failed")["error"], error);
    app.stop().await;
}

#[tokio::test]
async fn a_one_megabyte_chunk_and_thousands_of_small_ones_are_stored_whole() {
    let app = App::start().await;
    let done = app.run("huge").await;
    let reply = done.checked_reply("completed").expect("reply stored");
    assert_eq!(reply.content.len(), HUGE + 2000);
    assert!(reply.content.ends_with("éé"));
    let done = app.run("many small").await;
    let reply = done.checked_reply("completed").expect("reply stored");
    assert_eq!(reply.content.len(), 2000);
    assert!(reply.content.starts_with("0123456789012"));
    app.stop().await;
}

#[tokio::test]
async fn hostile_claude_output_lines_end_in_a_stored_reply() {
    let app = App::start().await;
    let done = app.run("claude lines").await;
    let reply = done.checked_reply("completed").expect("reply stored");
    let head = "nul:\u{FFFD}:end\n\nbad \u{FFFD}\u{FFFD} utf8";
    assert!(reply.content.starts_with(head), "{:.80}", reply.content);
    assert_eq!(reply.content.len(), head.len() + HUGE, "the 1 MB delta follows whole");
    app.stop().await;
}

/// A panic inside a run (here in the assistant's stream) fails that turn with a clear
/// error and a `turn_failed` event, frees its worker and its lease, and the
/// conversation takes the next message. Three panics on two workers: a worker lost to a
/// panic would leave the last turns unanswered.
#[tokio::test]
async fn a_panicking_assistant_fails_only_its_turn_and_the_conversation_goes_on() {
    let app = App::start().await;
    let conversation_id = app.conversation("panics").await;
    for _ in 0..3 {
        let done = app.run_in(conversation_id, "panic midway").await;
        assert_eq!(done.turn.status.as_ref(), "failed", "{:?}", done.turn);
        assert_eq!(done.turn.attempt, 1, "failed, not re-run");
        assert!(done.turn.lease_until.is_none(), "the lease is released");
        let error = done.turn.error.as_deref().expect("turn error");
        assert!(error.contains("internal error") && error.contains("the scripted assistant has a bug"), "{error}");
        assert!(error.contains("/retry"), "tells the user what to do: {error}");
        let kinds: Vec<&str> = done.events.iter().map(|e| e.kind.as_ref()).collect();
        assert_eq!(kinds.last(), Some(&"turn_failed"), "{kinds:?}");
        assert_eq!(event(&done, "turn_failed")["error"], error);
        assert!(done.messages.iter().any(|m| m.message_id == done.user_message_id), "the user message is kept");
    }
    let done = app.run_in(conversation_id, "nul everywhere").await;
    done.checked_reply("completed").expect("the next message is answered");
    assert_eq!(app.orchestrator.running_count(), 0);
    app.stop().await;
}

/// A previous run of the conversation still holds its run lock (as a run whose lease
/// was lost does while its processes stop): the claimed turn does not start its
/// assistant; after a lease of waiting it is requeued; once the lock is free it runs,
/// once.
#[tokio::test]
async fn a_turn_waits_while_a_previous_run_holds_the_conversations_run_lock() {
    let app = App::start_with_lease(Duration::from_secs(2)).await;
    let conversation_id = app.conversation("locked out").await;
    let holder = app.db.pool.get().await.expect("client");
    let lock = "select pg_advisory_lock(hashtextextended($1::uuid::text, 0))";
    holder.execute(lock, &[&conversation_id]).await.expect("lock");

    let posted = app
        .orchestrator
        .post_message(PostMessage {
            conversation_id,
            text: "locked out".into(),
            idempotency_key: None,
            metadata: json!({}),
            owner: None,
        })
        .await
        .expect("posted");
    let Ingested::Turn { turn_id, .. } = posted else { panic!("not a turn: {posted:?}") };
    let client = app.db.pool.get().await.expect("client");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let waiting = turn::get(&client, turn_id).await.expect("turn");
    assert_eq!(waiting.status.as_ref(), "running", "claimed: {waiting:?}");
    assert_eq!(LOCKED_OUT_RUNS.load(std::sync::atomic::Ordering::SeqCst), 0, "the assistant did not start");
    let events = event::list_after(&client, conversation_id, 0, 100).await.expect("events");
    assert!(events.is_empty(), "nothing happened in the conversation yet: {events:?}");

    // Past a lease of waiting, the turn went back to the queue (the claim not counted as
    // an attempt) and was claimed again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let requeued = turn::get(&client, turn_id).await.expect("turn");
    assert!(requeued.started_at > waiting.started_at, "requeued and claimed again: {requeued:?}");
    assert_eq!(requeued.attempt, 1, "{requeued:?}");
    assert_eq!(LOCKED_OUT_RUNS.load(std::sync::atomic::Ordering::SeqCst), 0, "still not started");

    let unlock = "select pg_advisory_unlock(hashtextextended($1::uuid::text, 0))";
    holder.execute(unlock, &[&conversation_id]).await.expect("unlock");
    let mut done = turn::get(&client, turn_id).await.expect("turn");
    for _ in 0..200 {
        if done.status.as_ref() == "completed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        done = turn::get(&client, turn_id).await.expect("turn");
    }
    assert_eq!((done.status.as_ref(), done.attempt), ("completed", 1), "{done:?}");
    assert_eq!(LOCKED_OUT_RUNS.load(std::sync::atomic::Ordering::SeqCst), 1, "the assistant ran once");
    drop(client);
    drop(holder);
    app.stop().await;
}
