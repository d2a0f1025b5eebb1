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
//! A process is reused only when everything still matches ([`WarmProcess::fits`]): the
//! same arguments, working directory and environment, the session the run resumes, a
//! live process, the replica still the conversation's holder, and the session's
//! transcript file (`$CLAUDE_CONFIG_DIR/projects/<cwd, every non-alphanumeric character
//! replaced by '-'>/<session>.jsonl`) the same file (inode) at least as long as after the
//! process's previous turn. Anything else kills it and the run starts a new process with
//! `--resume`, as a cold run does (and a stale session is then found as usual).
//!
//! The pool ([`WarmPool`]) keeps idle processes by conversation, at most
//! [`WarmConfig::max_processes`] (the least recently used goes first), for at most
//! [`WarmConfig::idle_timeout`], and within [`WarmConfig::max_rss_bytes`] of resident
//! memory in total (read from `/proc/PID/status`).

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::ChildStdin;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, warn};

use uuid::Uuid;

use super::ClaudeConfig;
use super::stream::ClaudeStream;
use crate::process::{CliProcess, Exit, Output, ProcessSpec};
use crate::{AssistantError, Chunk, RunSettings, WarmKey, run_marker};

/// Limits of the warm processes of one adapter.
#[derive(Debug, Clone)]
pub struct WarmConfig {
    /// Most idle warm processes kept (least recently used evicted first); 0 turns warm
    /// processes off (every run starts its own process, as before).
    pub max_processes: usize,
    /// An idle warm process is killed after this long without a message.
    pub idle_timeout: Duration,
    /// Most resident memory of all idle warm processes together, in bytes (`VmRSS` of
    /// `/proc/PID/status`); over it the least recently used are killed. 0: no ceiling.
    pub max_rss_bytes: u64,
    /// How long a cancelled turn's process may take to acknowledge its interrupt and
    /// end the turn before it is killed.
    pub interrupt_wait: Duration,
}

impl Default for WarmConfig {
    fn default() -> Self {
        Self {
            max_processes: 32,
            idle_timeout: Duration::from_secs(600),
            max_rss_bytes: 8 * 1024 * 1024 * 1024,
            interrupt_wait: Duration::from_secs(2),
        }
    }
}

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

/// A transcript file as a warm process left it after its last turn.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Transcript {
    path: PathBuf,
    inode: u64,
    size: u64,
}

impl Transcript {
    fn read(path: PathBuf) -> Option<Self> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(&path).ok()?;
        Some(Self { inode: meta.ino(), size: meta.len(), path })
    }

    /// Why the file is no longer the one the process wrote, if it is not.
    fn changed(&self) -> Option<String> {
        match Self::read(self.path.clone()) {
            None => Some(format!("its transcript {} is gone", self.path.display())),
            Some(now) if now.inode != self.inode => Some("its transcript was replaced (another inode)".into()),
            Some(now) if now.size < self.size => Some("its transcript is shorter than after its last turn".into()),
            Some(_) => None,
        }
    }
}

/// Ends a warm run's markers when its process goes: see [`run_marker::keep_warm`].
#[derive(Debug)]
struct WarmRun(Uuid);

impl Drop for WarmRun {
    fn drop(&mut self) {
        run_marker::release_warm(self.0);
        let run_id = self.0;
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            // The process group is stopped by the process's own guard; this also reaches
            // whatever left the group.
            handle.spawn(
                async move {
                    run_marker::kill_run(run_id, Duration::from_secs(10)).await;
                }
                .in_current_span(),
            );
        }
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
    transcript: Option<Transcript>,
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
        let transcript = resume.as_deref().and_then(|s| fingerprint.transcript_path(s)).and_then(Transcript::read);
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
    fn unfit(&mut self, key: &WarmKey, fingerprint: &Fingerprint, resume: Option<&str>) -> Option<String> {
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

    /// Its run ID.
    #[must_use]
    pub(crate) fn run_id(&self) -> Uuid {
        self.run.0
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
        self.transcript = self.fingerprint.transcript_path(session).and_then(Transcript::read);
        if self.transcript.is_none() {
            debug!(session, "the transcript of the warm process's session was not found; not keeping it");
        }
        self.transcript.is_some()
    }

    fn pid(&self) -> Option<i32> {
        self.process.pid()
    }

    /// Resident memory, in bytes (`VmRSS` of `/proc/PID/status`); 0 when unknown.
    fn rss(&self) -> u64 {
        let Some(pid) = self.pid() else { return 0 };
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { return 0 };
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    }
}

/// The idle warm processes of one adapter, by conversation.
#[derive(Debug)]
pub struct WarmPool {
    config: WarmConfig,
    idle: Mutex<HashMap<Uuid, WarmProcess>>,
    /// Conversations with a run in progress (and how many), which no process started
    /// ahead of a message may join.
    busy: Mutex<HashMap<Uuid, usize>>,
    reaper: OnceLock<()>,
}

/// A run in progress on a conversation ([`WarmPool::run_started`]); ends when dropped.
#[derive(Debug)]
pub(crate) struct Busy {
    pool: Arc<WarmPool>,
    conversation_id: Uuid,
}

impl Drop for Busy {
    fn drop(&mut self) {
        let mut busy = self.pool.busy.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = busy.get_mut(&self.conversation_id) {
            *n -= 1;
            if *n == 0 {
                busy.remove(&self.conversation_id);
            }
        }
    }
}

impl WarmPool {
    /// An empty pool with these limits.
    #[must_use]
    pub fn new(config: WarmConfig) -> Arc<Self> {
        Arc::new(Self { config, idle: Mutex::default(), busy: Mutex::default(), reaper: OnceLock::new() })
    }

    /// Marks a run of the conversation in progress until the returned guard is dropped.
    pub(crate) fn run_started(self: &Arc<Self>, conversation_id: Uuid) -> Busy {
        *self.busy.lock().unwrap_or_else(PoisonError::into_inner).entry(conversation_id).or_default() += 1;
        Busy { pool: Arc::clone(self), conversation_id }
    }

    /// True while a run of the conversation is in progress.
    pub(crate) fn busy(&self, conversation_id: Uuid) -> bool {
        self.busy.lock().unwrap_or_else(PoisonError::into_inner).contains_key(&conversation_id)
    }

    /// Its limits.
    #[must_use]
    pub fn config(&self) -> &WarmConfig {
        &self.config
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, WarmProcess>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How many idle warm processes it holds.
    #[must_use]
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when it holds none.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True when the conversation has an idle warm process.
    #[must_use]
    pub fn holds(&self, conversation_id: Uuid) -> bool {
        self.lock().contains_key(&conversation_id)
    }

    /// The conversation's process, when it can answer a run of `key` with `fingerprint`
    /// resuming `resume`; a process that cannot is killed.
    pub(crate) fn take(&self, key: &WarmKey, fingerprint: &Fingerprint, resume: Option<&str>) -> Option<WarmProcess> {
        let mut warm = self.lock().remove(&key.conversation_id)?;
        match warm.unfit(key, fingerprint, resume) {
            None => Some(warm),
            Some(why) => {
                info!(conversation_id = %key.conversation_id, %why, "not reusing the warm claude process; starting cold");
                None
            }
        }
    }

    /// Kills the conversation's idle process, if any.
    pub fn forget(&self, conversation_id: Uuid) {
        let gone = self.lock().remove(&conversation_id);
        if gone.is_some() {
            info!(%conversation_id, "killed the conversation's warm claude process");
        }
    }

    /// Keeps `warm` for the conversation's next message, then evicts what is over the
    /// limits (least recently used first).
    pub(crate) fn put(self: &Arc<Self>, conversation_id: Uuid, warm: WarmProcess) {
        if let Some(pid) = warm.pid() {
            run_marker::keep_warm(warm.run_id(), pid);
        }
        let evicted = {
            let mut idle = self.lock();
            let replaced = idle.insert(conversation_id, warm);
            let mut evicted: Vec<WarmProcess> = replaced.into_iter().collect();
            evicted.extend(Self::over_limits(&self.config, &mut idle, Instant::now()));
            evicted
        };
        drop(evicted);
        self.start_reaper();
    }

    /// Whether a new process may be started ahead of a message (there is room).
    pub(crate) fn has_room(&self) -> bool {
        self.lock().len() < self.config.max_processes
    }

    /// Removes what is past the idle timeout, over the count, or over the memory ceiling.
    fn over_limits(config: &WarmConfig, idle: &mut HashMap<Uuid, WarmProcess>, now: Instant) -> Vec<WarmProcess> {
        let mut out = Vec::new();
        let expired: Vec<Uuid> = idle
            .iter()
            .filter(|(_, w)| now.saturating_duration_since(w.last_used) >= config.idle_timeout)
            .map(|(k, _)| *k)
            .collect();
        for k in expired {
            out.extend(idle.remove(&k));
            debug!(conversation_id = %k, "warm claude process idle too long");
        }
        let mut by_age: Vec<(Uuid, Instant, u64)> = idle.iter().map(|(k, w)| (*k, w.last_used, w.rss())).collect();
        by_age.sort_by_key(|(_, used, _)| *used);
        let mut total: u64 = by_age.iter().map(|(_, _, rss)| rss).sum();
        let mut count = by_age.len();
        for (k, _, rss) in by_age {
            let over_memory = config.max_rss_bytes > 0 && total > config.max_rss_bytes;
            if count <= config.max_processes && !over_memory {
                break;
            }
            info!(conversation_id = %k, rss_bytes = rss, over_memory, "evicting a warm claude process");
            out.extend(idle.remove(&k));
            total -= rss;
            count -= 1;
        }
        out
    }

    /// Starts the task that enforces the idle timeout and the memory ceiling (once).
    fn start_reaper(self: &Arc<Self>) {
        if self.reaper.set(()).is_err() {
            return;
        }
        let pool: Weak<Self> = Arc::downgrade(self);
        let tick = (self.config.idle_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
        tokio::spawn(
            async move {
                loop {
                    tokio::time::sleep(tick).await;
                    let Some(pool) = pool.upgrade() else { return };
                    let evicted = Self::over_limits(&pool.config, &mut pool.lock(), Instant::now());
                    drop(evicted);
                }
            }
            .instrument(tracing::info_span!(parent: None, "warm_pool", assistant = "claude")),
        );
    }

    /// Kills every idle process and waits (up to 10 s each) for their processes to be
    /// gone.
    pub async fn stop_all(&self) {
        let all: Vec<WarmProcess> = self.lock().drain().map(|(_, w)| w).collect();
        for warm in all {
            let run_id = warm.run_id();
            let _ = warm.process.stop().await;
            run_marker::release_warm(run_id);
            run_marker::kill_run(run_id, Duration::from_secs(10)).await;
        }
    }
}

/// One turn on a warm process: writes `prompt`, streams the turn's chunks until its
/// `result`, and puts the process back into `pool` for the conversation's next message
/// when the turn completed in the session it expected (before the last chunk, so the
/// turn's [`run_marker::end_run`] spares it). A cancelled turn is interrupted and its
/// process stopped; any failure stops it too.
pub(crate) fn turn(
    pool: Arc<WarmPool>,
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
        let interrupt_wait = pool.config.interrupt_wait;
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

    #[test]
    fn a_transcript_changes_when_gone_replaced_or_shorter_not_when_it_grows() {
        use std::io::Write;
        let dir = std::env::temp_dir().join(format!("parley-warm-transcript-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("s.jsonl");
        std::fs::write(&path, "one\ntwo\n").expect("write");
        let seen = Transcript::read(path.clone()).expect("stat");
        assert_eq!(seen.changed(), None);
        std::fs::OpenOptions::new().append(true).open(&path).and_then(|mut f| f.write_all(b"three\n")).expect("append");
        assert_eq!(seen.changed(), None, "the CLI may append after its result");
        std::fs::write(&path, "one\n").expect("truncate");
        assert!(seen.changed().is_some_and(|why| why.contains("shorter")));
        // A restored copy is a new file (another inode), even when it is longer.
        let grown = Transcript::read(path.clone()).expect("stat");
        let copy = dir.join("copy");
        std::fs::write(&copy, "one\ntwo\nthree\nfour\n").expect("write");
        std::fs::rename(&copy, &path).expect("rename");
        assert!(grown.changed().is_some_and(|why| why.contains("inode")));
        std::fs::remove_file(&path).expect("remove");
        assert!(grown.changed().is_some_and(|why| why.contains("gone")));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
