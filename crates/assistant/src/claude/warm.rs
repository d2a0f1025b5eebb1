//! Warm Claude processes: one live `claude -p --input-format stream-json` per active
//! conversation, answering each of the conversation's messages without a new start-up
//! (`docs/architecture.md#warm-processes`).
//!
//! Protocol (claude-code 2.1.329, see `tests/fixtures/claude-input-stream-json-two-turns.jsonl`
//! and its `.stdin.jsonl`): each message is one stdin line
//! `{"type":"user","message":{"role":"user","content":"…"},"parent_tool_use_id":null}`;
//! the CLI answers it with its own `system/init` … `result` on stdout and waits for the
//! next line. A turn is interrupted with the control request
//! `{"type":"control_request","request_id":"…","request":{"subtype":"interrupt"}}`, which
//! the CLI acknowledges with a `control_response` and ends with an
//! `error_during_execution` result.
//!
//! A process is reused only when everything still matches ([`WarmProcess::unfit`]): the
//! same arguments, working directory and environment, the session the run resumes, a
//! live process, the replica still the conversation's holder, and the session's
//! transcript file (`$CLAUDE_CONFIG_DIR/projects/<cwd, every non-alphanumeric character
//! replaced by '-'>/<session>.jsonl`) the same file (inode) at least as long as after the
//! process's previous turn. Anything else kills it and the run starts a new process with
//! `--resume`, as a cold run does (and a stale session is then found as usual).
//!
//! The pool that keeps them between turns, and its limits, are shared with the other
//! CLI adapters: [`crate::warm`].

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::future::BoxFuture;

use tokio::io::AsyncWriteExt;
use tokio::process::ChildStdin;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use uuid::Uuid;

use super::ClaudeConfig;
use super::stream::ClaudeStream;
use crate::process::{CliProcess, Exit, Output, ProcessSpec};
use crate::warm::{SessionFileSeen, Warm, WarmPool, WarmRun};
use crate::{AssistantError, Chunk, RunSettings, WarmKey, run_marker};

/// What a warm process was started with: a run whose own differs cannot use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Fingerprint {
    /// The arguments, without the session flags (`--resume`, `--session-id`).
    args: Vec<OsString>,
    cwd: Option<PathBuf>,
    env: Vec<(OsString, OsString)>,
}

impl Fingerprint {
    pub(crate) fn of(config: &ClaudeConfig, settings: &RunSettings, cwd: Option<&Path>) -> Self {
        Self {
            args: config.args(settings, None, None),
            cwd: cwd.map(Path::to_path_buf),
            env: config.env(std::env::vars_os()),
        }
    }

    /// Where the CLI keeps the transcript of `session`: under `$CLAUDE_CONFIG_DIR` (else
    /// `$HOME/.claude`) of the environment it was started with, at
    /// [`super::transcript_relative`].
    fn transcript_path(&self, session: &str) -> Option<PathBuf> {
        let var = |name: &str| self.env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        let config_dir = var("CLAUDE_CONFIG_DIR").map(PathBuf::from);
        let override_name =
            var("CLAUDE_CODE_PROJECT_DIR_NAME").filter(|_| config_dir.is_some()).and_then(|v| v.into_string().ok());
        let home = config_dir.or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".claude")))?;
        Some(home.join(super::transcript_relative(session, self.cwd.as_deref(), override_name.as_deref())?))
    }
}

/// One live CLI that reads its messages from stdin.
#[derive(Debug)]
pub(crate) struct WarmProcess {
    process: CliProcess,
    stdin: ChildStdin,
    /// The run ID its processes carry; it outlives the turns it answers.
    run: WarmRun,
    fingerprint: Fingerprint,
    /// The assistant session it is in (`None` before its first message when fresh).
    session: Option<String>,
    /// The session ID it was started with by `--session-id`, when fresh.
    assigned: Option<String>,
    transcript: Option<SessionFileSeen>,
    last_used: Instant,
}

/// One turn's stdin line (claude-code 2.1.329 `--input-format stream-json`).
fn user_line(prompt: &str) -> String {
    let line = serde_json::json!({
        "type": "user",
        "message": { "role": "user", "content": prompt },
        "parent_tool_use_id": null,
    });
    format!("{line}\n")
}

impl WarmProcess {
    /// Starts a CLI reading stream-json from stdin, resuming `resume` or starting the
    /// fresh session `assigned` (or one the CLI picks).
    pub(crate) async fn start(
        config: &ClaudeConfig,
        settings: &RunSettings,
        cwd: Option<PathBuf>,
        resume: Option<String>,
        assigned: Option<String>,
    ) -> Result<Self, AssistantError> {
        let fingerprint = Fingerprint::of(config, settings, cwd.as_deref());
        let mut args = config.args(settings, resume.as_deref(), assigned.as_deref());
        args.splice(1..1, ["--input-format".into(), "stream-json".into()]);
        if let Some(cwd) = &cwd
            && let Err(e) = tokio::fs::create_dir_all(cwd).await
        {
            warn!(cwd = %cwd.display(), error = %e, "cannot create the conversation's working directory");
        }
        let run_id = Uuid::new_v4();
        let transcript = resume.as_deref().and_then(|s| fingerprint.transcript_path(s)).and_then(SessionFileSeen::read);
        let spec = ProcessSpec {
            program: config.binary.clone(),
            args,
            cwd,
            env: fingerprint.env.clone(),
            stdin: String::new(),
            limits: config.limits.clone(),
            assistant: "claude",
            run_id,
        };
        let (process, stdin) = CliProcess::spawn_interactive(spec).await?;
        Ok(Self {
            process,
            stdin,
            run: WarmRun(run_id),
            fingerprint,
            session: resume,
            assigned,
            transcript,
            last_used: Instant::now(),
        })
    }

    /// Why this process cannot answer a run of `key` with `fingerprint` resuming
    /// `resume`, if it cannot.
    pub(crate) fn unfit(&mut self, key: &WarmKey, fingerprint: &Fingerprint, resume: Option<&str>) -> Option<String> {
        // A process that has not answered yet holds nothing another replica could change.
        if !key.may_reuse && self.session.is_some() {
            return Some("another replica ran the conversation since".into());
        }
        if self.fingerprint != *fingerprint {
            return Some("the conversation's settings, directory or environment changed".into());
        }
        if self.session.as_deref() != resume {
            return Some(format!("it holds session {:?}, the run resumes {resume:?}", self.session));
        }
        if self.process.has_exited() {
            return Some("it exited".into());
        }
        match (&self.session, &self.transcript) {
            (None, _) => None,
            (Some(_), None) => Some("its transcript was never seen".into()),
            (Some(_), Some(t)) => t.changed(),
        }
    }

    /// The session it was started fresh in, to announce before the CLI says it.
    pub(crate) fn assigned(&self) -> Option<&str> {
        self.assigned.as_deref().filter(|_| self.session.is_none())
    }

    /// The session it resumes (or is in).
    pub(crate) fn session(&self) -> Option<&str> {
        self.session.as_deref()
    }

    /// Writes one message.
    pub(crate) async fn send(&mut self, prompt: &str) -> std::io::Result<()> {
        self.process.rearm();
        let line = user_line(prompt);
        self.stdin.write_all(line.as_bytes()).await?;
        self.stdin.flush().await?;
        debug!(bytes = line.len(), "wrote the prompt to the CLI's stdin");
        Ok(())
    }

    /// The next stdout line; only timeouts stop the process here (cancellation is the
    /// caller's, through [`Self::interrupt`]).
    pub(crate) async fn next(&mut self) -> Result<Output, AssistantError> {
        static NEVER: OnceLock<CancellationToken> = OnceLock::new();
        self.process.next(NEVER.get_or_init(CancellationToken::new)).await
    }

    /// Asks the CLI to stop its turn (the stdin control protocol), waits up to `wait`
    /// for the turn's `result`, then stops the process: a cancelled turn's process is
    /// never reused, the next message starts cold with `--resume`.
    pub(crate) async fn interrupt(mut self, wait: Duration) -> Exit {
        let request = serde_json::json!({
            "type": "control_request",
            "request_id": format!("parley-{}", Uuid::new_v4().simple()),
            "request": { "subtype": "interrupt" },
        });
        let written = self.stdin.write_all(format!("{request}\n").as_bytes()).await.and(self.stdin.flush().await);
        if written.is_ok() {
            let ended = tokio::time::timeout(wait, async {
                loop {
                    match self.next().await {
                        Ok(Output::Line(line)) if line.contains(r#""type":"result""#) => return true,
                        Ok(Output::Line(_) | Output::Oversized { .. }) => {}
                        Ok(Output::Eof) | Err(_) => return false,
                    }
                }
            })
            .await;
            debug!(acknowledged = matches!(ended, Ok(true)), "interrupted the warm claude process's turn");
        }
        self.process.stop().await
    }

    /// Closes stdin and waits for the process to exit (after an error result or the end
    /// of its output).
    pub(crate) async fn finish(self) -> Exit {
        let Self { process, stdin, run, .. } = self;
        drop(stdin);
        let exit = process.finish().await;
        drop(run);
        exit
    }

    /// After a successful turn in `session`: remembers the session and its transcript
    /// as they are now. False when the transcript cannot be found (the process is then
    /// not kept: a reuse could not be checked).
    pub(crate) fn turn_done(&mut self, session: &str) -> bool {
        self.session = Some(session.to_owned());
        self.last_used = Instant::now();
        self.transcript = self.fingerprint.transcript_path(session).and_then(SessionFileSeen::read);
        if self.transcript.is_none() {
            debug!(session, "the transcript of the warm process's session was not found; not keeping it");
        }
        self.transcript.is_some()
    }
}

impl Warm for WarmProcess {
    fn pid(&self) -> Option<i32> {
        self.process.pid()
    }

    fn run_id(&self) -> Uuid {
        self.run.0
    }

    fn last_used(&self) -> Instant {
        self.last_used
    }

    fn stop(self) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let _ = self.process.stop().await;
        })
    }
}

/// One turn on a warm process: writes `prompt`, streams the turn's chunks until its
/// `result`, and puts the process back into `pool` for the conversation's next message
/// when the turn completed in the session it expected (before the last chunk, so the
/// turn's [`run_marker::end_run`] spares it). A cancelled turn is interrupted and its
/// process stopped; any failure stops it too.
pub(crate) fn turn(
    pool: Arc<WarmPool<WarmProcess>>,
    conversation_id: Uuid,
    mut warm: WarmProcess,
    prompt: String,
    cancel: CancellationToken,
    turn_run_id: Uuid,
) -> impl futures::Stream<Item = Result<Chunk, AssistantError>> + Send + 'static {
    async_stream::stream! {
        let run_id = turn_run_id;
        let mut parser = match (warm.assigned(), warm.session()) {
            (Some(id), _) => {
                yield Ok(Chunk::SessionStarted { id: id.to_owned() });
                ClaudeStream::with_session_id(id.to_owned())
            }
            (None, resume) => ClaudeStream::new(resume.map(str::to_owned)),
        };
        if let Err(e) = warm.send(&prompt).await {
            debug!(error = %e, "writing the message to the warm claude process failed");
            let exit = warm.finish().await;
            yield parser.finish(exit.code, &exit.stderr);
            return;
        }
        let interrupt_wait = pool.config().interrupt_wait;
        loop {
            let out = tokio::select! {
                biased;
                () = cancel.cancelled() => None,
                out = warm.next() => Some(out),
            };
            let Some(out) = out else {
                warm.interrupt(interrupt_wait).await;
                yield Err(AssistantError::Cancelled);
                return;
            };
            match out {
                Ok(Output::Line(line)) => {
                    for chunk in parser.line(&line) {
                        if matches!(chunk, Chunk::ToolUse { .. }) {
                            run_marker::warm_turn_used_tools(run_id);
                        }
                        yield Ok(chunk);
                    }
                    if parser.has_result() {
                        break;
                    }
                }
                Ok(Output::Oversized { bytes }) => warn!(bytes, "skipped an over-long claude output line"),
                Ok(Output::Eof) => break,
                Err(e) => {
                    yield Err(e);
                    return;
                }
            }
        }
        let expected = warm.session().or(warm.assigned()).map(str::to_owned);
        let outcome = parser.has_result().then(|| parser.finish(None, ""));
        let keep = match (&outcome, parser.init_session()) {
            (Some(Ok(Chunk::Completed { .. })), Some(init)) => {
                if expected.as_deref().is_some_and(|e| e != init) {
                    info!(?expected, reported = %init, "claude reports another session; not keeping its process");
                    false
                } else {
                    warm.turn_done(init)
                }
            }
            _ => false,
        };
        if keep && let Some(outcome) = outcome {
            pool.put(conversation_id, warm);
            yield outcome;
            return;
        }
        let exit = warm.finish().await;
        yield parser.finish(exit.code, &exit.stderr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_is_one_stream_json_user_line() {
        let line = user_line("two\nlines \"quoted\"");
        assert!(line.ends_with('\n') && line.matches('\n').count() == 1, "{line:?}");
        let v: serde_json::Value = serde_json::from_str(line.trim_end()).expect("JSON");
        assert_eq!(
            v,
            serde_json::json!({
                "type": "user",
                "message": { "role": "user", "content": "two\nlines \"quoted\"" },
                "parent_tool_use_id": null,
            })
        );
    }

    #[test]
    fn the_transcript_lies_under_the_config_dir_in_the_cwds_project() {
        let fingerprint = Fingerprint {
            args: Vec::new(),
            cwd: Some(PathBuf::from("/home/dev/capture/work.dir_x y")),
            env: vec![("CLAUDE_CONFIG_DIR".into(), "/cfg".into()), ("HOME".into(), "/home/dev".into())],
        };
        // claude-code 2.1.329: every non-alphanumeric character of the cwd becomes '-'
        // (`tests/fixtures/claude-input-stream-json-two-turns.jsonl` names
        // `projects/-home-dev-capture-work` for `/home/dev/capture/work`).
        assert_eq!(
            fingerprint.transcript_path("abc"),
            Some(PathBuf::from("/cfg/projects/-home-dev-capture-work-dir-x-y/abc.jsonl"))
        );
        let home_only = Fingerprint { env: vec![("HOME".into(), "/home/dev".into())], ..fingerprint };
        assert_eq!(
            home_only.transcript_path("abc"),
            Some(PathBuf::from("/home/dev/.claude/projects/-home-dev-capture-work-dir-x-y/abc.jsonl"))
        );
    }
}
