//! The `demo` assistant: offline, for the quickstart, demos and tests.
//!
//! It answers every message with a short reply streamed in several text chunks, each
//! after a configurable delay. It keeps its sessions in process memory, so a Parley
//! restart makes every stored assistant session ID stale — which makes Parley's
//! recovery visible in the quickstart itself: the first reply after a restart says the
//! session is fresh and how many earlier messages it was given.
//!
//! Directives in the *new message* (never in rebuilt history) steer it, for demos and
//! tests:
//! - `[demo:fail]` — the run fails with [`AssistantError::Api`].
//! - `[demo:slow]` — each chunk waits `slow_chunk_delay` instead of `chunk_delay`.
//! - `[demo:tool]` — the reply includes a tool call and its result.
//! - `[demo:thinking]` — the reply starts with a thinking chunk.
//!
//! A conversation's model ([`crate::RunSettings::model`]) is named at the end of the
//! reply; its other settings mean nothing to the demo.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use uuid::Uuid;

use crate::{Assistant, AssistantError, Chunk, RunRequest, Usage};

/// Settings of the demo assistant.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    /// Delay before each text chunk; zero for instant replies (benchmarks).
    pub chunk_delay: Duration,
    /// Delay before each text chunk when the message says `[demo:slow]`.
    pub slow_chunk_delay: Duration,
}

impl Default for DemoConfig {
    fn default() -> Self {
        Self { chunk_delay: Duration::from_millis(80), slow_chunk_delay: Duration::from_millis(1000) }
    }
}

#[derive(Debug, Default)]
struct DemoSession {
    answered: u64,
}

/// The demo assistant. Cloning shares its sessions and request log.
#[derive(Debug, Clone, Default)]
pub struct Demo {
    config: DemoConfig,
    sessions: Arc<Mutex<HashMap<String, DemoSession>>>,
    requests: Arc<Mutex<Vec<RunRequest>>>,
}

impl Demo {
    /// A demo assistant with no sessions.
    #[must_use]
    pub fn new(config: DemoConfig) -> Self {
        Self { config, ..Self::default() }
    }

    /// Every request it received, oldest first (tests inspect the prompts).
    #[must_use]
    pub fn requests(&self) -> Vec<RunRequest> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// Forgets every session, as a process restart would.
    pub fn forget_sessions(&self) {
        if let Ok(mut s) = self.sessions.lock() {
            s.clear();
        }
    }

    /// Plans a run: which session it uses and the reply, or the error to report.
    fn plan(&self, request: &RunRequest) -> Result<(String, bool, u64), AssistantError> {
        let mut sessions = self.sessions.lock().map_err(|_| AssistantError::Protocol("demo state poisoned".into()))?;
        let (id, fresh) = match &request.resume {
            Some(id) if sessions.contains_key(id) => (id.clone(), false),
            Some(id) => {
                return Err(AssistantError::StaleSession {
                    session_id: id.clone(),
                    detail: format!("No conversation found with session ID: {id}"),
                });
            }
            None => (Uuid::new_v4().to_string(), true),
        };
        let session = sessions.entry(id.clone()).or_default();
        session.answered += 1;
        Ok((id, fresh, session.answered))
    }
}

fn reply_text(request: &RunRequest, session_id: &str, fresh: bool, answered: u64) -> String {
    let quoted: String = request.message.chars().take(200).collect();
    let mut reply = format!("Demo reply to «{quoted}». ");
    let short = &session_id[..8.min(session_id.len())];
    if fresh && request.history_messages > 0 {
        reply.push_str(&format!(
            "This is a fresh demo session ({short}); Parley gave it {} earlier message(s) from its history.",
            request.history_messages
        ));
    } else if fresh {
        reply.push_str(&format!("This is a fresh demo session ({short})."));
    } else {
        reply.push_str(&format!("Demo session {short} has now answered {answered} message(s)."));
    }
    if let Some(model) = &request.settings.model {
        reply.push_str(&format!(" Model: {model}."));
    }
    reply
}

/// Splits text into about `parts` pieces at spaces, keeping every character.
fn split_chunks(text: &str, parts: usize) -> Vec<String> {
    let words: Vec<&str> = text.split_inclusive(' ').collect();
    let per = words.len().div_ceil(parts.max(1)).max(1);
    words.chunks(per).map(|c| c.concat()).collect()
}

impl Assistant for Demo {
    fn name(&self) -> &str {
        "demo"
    }

    fn run(&self, request: RunRequest) -> BoxStream<'static, Result<Chunk, AssistantError>> {
        if let Ok(mut log) = self.requests.lock() {
            log.push(request.clone());
        }
        let planned = self.plan(&request);
        let delay = if request.message.contains("[demo:slow]") {
            self.config.slow_chunk_delay
        } else {
            self.config.chunk_delay
        };
        async_stream::stream! {
            let (session_id, fresh, answered) = match planned {
                Ok(p) => p,
                Err(e) => { yield Err(e); return; }
            };
            yield Ok(Chunk::SessionStarted { id: session_id.clone() });
            if request.message.contains("[demo:fail]") {
                yield Err(AssistantError::Api { message: "the demo assistant failed because the message asked it to ([demo:fail])".into(), status: None });
                return;
            }
            if request.message.contains("[demo:thinking]") {
                yield Ok(Chunk::Thinking { text: "The user wants a demo reply.".into() });
            }
            if request.message.contains("[demo:tool]") {
                let id = format!("demo_tool_{}", &session_id[..8.min(session_id.len())]);
                yield Ok(Chunk::ToolUse { id: id.clone(), name: "Bash".into(), input: serde_json::json!({"command": "echo demo"}) });
                yield Ok(Chunk::ToolResult { id, is_error: false, output: "demo\n".into() });
            }
            let text = reply_text(&request, &session_id, fresh, answered);
            let mut output_tokens = 0u64;
            for piece in split_chunks(&text, 6) {
                if !delay.is_zero() {
                    tokio::select! {
                        () = request.cancel.cancelled() => { yield Err(AssistantError::Cancelled); return; }
                        () = tokio::time::sleep(delay) => {}
                    }
                } else if request.cancel.is_cancelled() {
                    yield Err(AssistantError::Cancelled);
                    return;
                }
                output_tokens += piece.split_whitespace().count() as u64;
                yield Ok(Chunk::Text { text: piece });
            }
            yield Ok(Chunk::Completed {
                session_id: Some(session_id),
                usage: Some(Usage { input_tokens: request.prompt.split_whitespace().count() as u64, output_tokens }),
                cost_usd: Some(0.0),
                duration_ms: None,
            });
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(message: &str, resume: Option<String>) -> RunRequest {
        RunRequest {
            prompt: message.into(),
            message: message.into(),
            history_messages: 0,
            resume,
            cwd: None,
            cancel: tokio_util::sync::CancellationToken::new(),
            run_id: uuid::Uuid::new_v4(),
            settings: crate::RunSettings::default(),
            warm: None,
        }
    }

    async fn collect(demo: &Demo, req: RunRequest) -> Vec<Result<Chunk, AssistantError>> {
        demo.run(req).collect().await
    }

    #[tokio::test]
    async fn streams_several_text_chunks_and_completes_in_its_session() {
        let demo = Demo::new(DemoConfig { chunk_delay: Duration::ZERO, ..DemoConfig::default() });
        let chunks = collect(&demo, request("hello there", None)).await;
        let Some(Ok(Chunk::SessionStarted { id })) = chunks.first() else { panic!("no session: {chunks:?}") };
        let texts = chunks.iter().filter(|c| matches!(c, Ok(Chunk::Text { .. }))).count();
        assert!(texts >= 3, "expected several text chunks, got {texts}");
        let Some(Ok(Chunk::Completed { session_id, .. })) = chunks.last() else { panic!("no completion") };
        assert_eq!(session_id.as_deref(), Some(id.as_str()));
        let resumed = collect(&demo, request("again", Some(id.clone()))).await;
        assert!(matches!(resumed.last(), Some(Ok(Chunk::Completed { .. }))), "{resumed:?}");
    }

    #[tokio::test]
    async fn unknown_session_is_stale_and_restart_forgets_sessions() {
        let demo = Demo::new(DemoConfig { chunk_delay: Duration::ZERO, ..DemoConfig::default() });
        let chunks = collect(&demo, request("hi", None)).await;
        let Some(Ok(Chunk::SessionStarted { id })) = chunks.first() else { panic!() };
        demo.forget_sessions();
        let chunks = collect(&demo, request("hi", Some(id.clone()))).await;
        assert!(
            matches!(&chunks[..], [Err(AssistantError::StaleSession { session_id, .. })] if session_id == id),
            "{chunks:?}"
        );
    }

    #[test]
    fn split_keeps_every_character() {
        let text = "one two three four five six seven eight";
        let parts = split_chunks(text, 3);
        assert_eq!(parts.concat(), text);
        assert_eq!(parts.len(), 3);
    }
}
