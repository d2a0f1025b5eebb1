//! Child-process plumbing shared by the CLI adapters ([`crate::claude`], [`crate::codex`]).
//!
//! A [`CliProcess`] is one run of an assistant CLI:
//! - started with an explicit environment ([`cli_env`]: `env_clear` plus an allow-list),
//!   so platform secrets (bot tokens, `DATABASE_URL`…) never reach the CLI;
//! - in its own process group, so that cancelling kills the CLI *and* the tools it
//!   spawned: `SIGTERM` to the group, a grace period, then `SIGKILL`. CLIs may start
//!   their tools in process groups of their own (claude-code 2.1.329 does so for every
//!   Bash tool call), out of reach of the group's signals, so the CLI's descendants found
//!   through `/proc` parent links (Linux) are signalled one by one as well — collected
//!   while the CLI still lives, since they lose that link when it dies;
//! - with the prompt written to its stdin (never argv: argv is limited to 128 KiB per
//!   argument and shows in `ps`);
//! - read line by line with a bounded line length, an idle timeout and a total timeout;
//! - keeping the tail of its stderr for error messages.
//!
//! Dropping a [`CliProcess`] (the run's stream was dropped) terminates its process group
//! the same way, in the background.
//!
//! Two more safeguards cover what the above cannot reach:
//! - every CLI carries its run's markers in its environment ([`crate::run_marker`]), which
//!   its tools inherit whatever group or session they move to: the orchestrator ends each
//!   run with [`crate::run_marker::end_run`], and after a crash kills what a dead Parley
//!   left behind;
//! - on Linux the CLI gets `SIGKILL` when Parley dies, however it dies (`PR_SET_PDEATHSIG`,
//!   see [`die_with_parent`]).

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, warn};
use uuid::Uuid;

use crate::run_marker::{self, OWNER_ENV, RUN_ID_ENV};
use crate::{AssistantError, human_duration};

/// Limits applied to one CLI run.
#[derive(Debug, Clone)]
pub struct ProcessLimits {
    /// Longest stdout line kept, in bytes; longer lines are skipped with a warning.
    pub max_line_bytes: usize,
    /// The run fails with [`AssistantError::Timeout`] when stdout stays silent this long.
    pub idle_timeout: Duration,
    /// The run fails with [`AssistantError::Timeout`] after this long in total.
    pub total_timeout: Duration,
    /// Time between `SIGTERM` and `SIGKILL` when the process group is stopped.
    pub kill_grace: Duration,
    /// How much of stderr is kept for error messages, in bytes.
    pub stderr_tail_bytes: usize,
    /// How long to wait for the process to exit once its final result line was read.
    pub exit_wait: Duration,
}

impl Default for ProcessLimits {
    fn default() -> Self {
        Self {
            max_line_bytes: 8 * 1024 * 1024,
            idle_timeout: Duration::from_secs(600),
            total_timeout: Duration::from_secs(3600),
            kill_grace: Duration::from_secs(5),
            stderr_tail_bytes: 4096,
            exit_wait: Duration::from_secs(10),
        }
    }
}

/// Environment variables every CLI may inherit from Parley's environment: locale,
/// home, path, proxies and CA bundles. Everything else is dropped unless an adapter
/// allows it.
pub const BASE_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "LANG",
    "LANGUAGE",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "TMPDIR",
    "TERM",
    "XDG_CONFIG_HOME",
    "XDG_CACHE_HOME",
    "XDG_DATA_HOME",
    "XDG_STATE_HOME",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "NODE_EXTRA_CA_CERTS",
];

/// Builds a child's complete environment: the variables of `inherited` (names from
/// [`BASE_ENV`], `names`, or starting with one of `prefixes`) that `vars` holds, then
/// `explicit` on top (an explicit value wins).
#[must_use]
pub fn cli_env(
    vars: impl IntoIterator<Item = (OsString, OsString)>,
    names: &[String],
    prefixes: &[&str],
    explicit: &[(String, String)],
) -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> = vars
        .into_iter()
        .filter(|(k, _)| {
            let Some(k) = k.to_str() else { return false };
            BASE_ENV.contains(&k) || names.iter().any(|n| n == k) || prefixes.iter().any(|p| k.starts_with(p))
        })
        .collect();
    for (k, v) in explicit {
        env.retain(|(name, _)| name.as_os_str() != OsStr::new(k));
        env.push((k.into(), v.into()));
    }
    env
}

/// What to start.
#[derive(Debug, Clone)]
pub struct ProcessSpec {
    /// The executable (a path, or a name looked up on the child's `PATH`).
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// Its working directory; Parley's own when `None`.
    pub cwd: Option<PathBuf>,
    /// Its complete environment (see [`cli_env`]); the run's markers
    /// ([`crate::run_marker`]) are added to it.
    pub env: Vec<(OsString, OsString)>,
    /// The run it belongs to ([`crate::RunRequest::run_id`]).
    pub run_id: Uuid,
    /// Written to its stdin, which is then closed.
    pub stdin: String,
    /// Limits of the run.
    pub limits: ProcessLimits,
    /// The assistant it runs for (`claude`, `codex`): the label of its metrics
    /// ([`crate::metrics`]).
    pub assistant: &'static str,
}

/// One line of output, or the end of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// A stdout line without its line terminator (invalid UTF-8 replaced by U+FFFD, so
    /// it holds at most [`ProcessLimits::max_line_bytes`] characters, though up to three
    /// times as many bytes).
    Line(String),
    /// A line longer than [`ProcessLimits::max_line_bytes`] was skipped.
    Oversized {
        /// Its length in bytes.
        bytes: usize,
    },
    /// Stdout was closed.
    Eof,
}

/// How the process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    /// The exit code; `None` when killed by a signal or never reaped.
    pub code: Option<i32>,
    /// The tail of stderr, trimmed.
    pub stderr: String,
}

/// A running CLI; see the module docs.
#[derive(Debug)]
pub struct CliProcess {
    program: String,
    guard: GroupGuard,
    stdout: LineReader<ChildStdout>,
    stderr: Option<JoinHandle<String>>,
    limits: ProcessLimits,
    deadline: Instant,
    /// Counts the process as live until the handle is dropped.
    _live: crate::metrics::LiveProcess,
}

impl CliProcess {
    /// Starts the process and writes the prompt to its stdin in the background.
    ///
    /// The process is forked by a thread that lives as long as Parley (see
    /// [`die_with_parent`]), carries the run's markers in its environment, and runs in a
    /// process group of its own.
    ///
    /// # Errors
    /// [`AssistantError::Exited`] (code `None`) when it cannot be started, e.g. the
    /// binary is missing.
    pub async fn spawn(spec: ProcessSpec) -> Result<Self, AssistantError> {
        Self::start(spec, false).await.map(|(process, _)| process)
    }

    /// Starts the process like [`Self::spawn`], but keeps its stdin open and returns it:
    /// [`ProcessSpec::stdin`] is written first (when not empty), and the caller writes
    /// more (a warm process reads one stream-json line per message, see
    /// [`crate::claude::warm`]).
    ///
    /// # Errors
    /// As [`Self::spawn`].
    pub async fn spawn_interactive(spec: ProcessSpec) -> Result<(Self, ChildStdin), AssistantError> {
        let (process, stdin) = Self::start(spec, true).await?;
        let stdin = stdin.ok_or_else(|| AssistantError::Protocol("no stdin pipe".into()))?;
        Ok((process, stdin))
    }

    async fn start(spec: ProcessSpec, keep_stdin: bool) -> Result<(Self, Option<ChildStdin>), AssistantError> {
        let program = spec.program.display().to_string();
        let mut cmd = Command::new(&spec.program);
        cmd.args(&spec.args)
            .env_clear()
            .envs(spec.env.iter().map(|(k, v)| (k.as_os_str(), v.as_os_str())))
            .env(RUN_ID_ENV, spec.run_id.to_string())
            .env(OWNER_ENV, run_marker::owner())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .process_group(0);
        if let Some(cwd) = &spec.cwd {
            cmd.current_dir(cwd);
        }
        die_with_parent(&mut cmd);
        run_marker::note_spawned(spec.run_id);
        let mut child = spawn_on_lasting_thread(cmd)
            .await
            .map_err(|e| AssistantError::Exited { code: None, stderr: format!("could not start `{program}`: {e}") })?;
        let live = crate::metrics::process_started(spec.assistant);
        let pgid = child.id().and_then(|id| i32::try_from(id).ok()).map(Pid::from_raw);
        debug!(%program, pid = ?pgid, "assistant CLI started");
        let mut kept_stdin = None;
        if keep_stdin {
            kept_stdin = child.stdin.take();
            if let Some(stdin) = kept_stdin.as_mut()
                && !spec.stdin.is_empty()
            {
                // Stays open: a failed write shows as the CLI's exit.
                if let Err(e) = stdin.write_all(spec.stdin.as_bytes()).await {
                    debug!(error = %e, "writing to the CLI's stdin failed");
                }
            }
        } else if let Some(mut stdin) = child.stdin.take() {
            let prompt = spec.stdin;
            // Spawned tasks log in the turn's span (conversation and turn IDs).
            tokio::spawn(
                async move {
                    // A CLI that exits early closes the pipe; its exit status tells why.
                    match stdin.write_all(prompt.as_bytes()).await {
                        Ok(()) => debug!(bytes = prompt.len(), "wrote the prompt to the CLI's stdin"),
                        Err(e) => debug!(error = %e, "writing the prompt to the CLI's stdin failed"),
                    }
                    let _ = stdin.shutdown().await;
                }
                .in_current_span(),
            );
        }
        let stdout = child.stdout.take().ok_or_else(|| AssistantError::Protocol("no stdout pipe".into()))?;
        let stderr =
            child.stderr.take().map(|s| tokio::spawn(read_tail(s, spec.limits.stderr_tail_bytes).in_current_span()));
        Ok((
            Self {
                program,
                guard: GroupGuard {
                    child: Some(child),
                    family: Family::new(pgid),
                    grace: spec.limits.kill_grace,
                    done: false,
                },
                stdout: LineReader::new(stdout, spec.limits.max_line_bytes),
                stderr,
                deadline: Instant::now() + spec.limits.total_timeout,
                limits: spec.limits,
                _live: live,
            },
            kept_stdin,
        ))
    }

    /// The CLI's process ID (also its process group's ID), `None` once it was reaped.
    #[must_use]
    pub fn pid(&self) -> Option<i32> {
        self.guard.child.as_ref().and_then(Child::id).and_then(|id| i32::try_from(id).ok())
    }

    /// True when the CLI has exited (or was stopped); reaps it then.
    pub fn has_exited(&mut self) -> bool {
        self.guard.done || self.guard.child.as_mut().is_none_or(|c| !matches!(c.try_wait(), Ok(None)))
    }

    /// Starts a new run on a process that lives across runs (a warm process): the total
    /// timeout ([`ProcessLimits::total_timeout`]) counts from now.
    pub fn rearm(&mut self) {
        self.deadline = Instant::now() + self.limits.total_timeout;
    }

    /// The next stdout line. On cancellation or a timeout the process group is stopped
    /// first.
    ///
    /// # Errors
    /// [`AssistantError::Cancelled`], [`AssistantError::Timeout`], or
    /// [`AssistantError::Protocol`] when stdout cannot be read.
    pub async fn next(&mut self, cancel: &CancellationToken) -> Result<Output, AssistantError> {
        let idle = self.limits.idle_timeout;
        let read = tokio::select! {
            biased;
            () = cancel.cancelled() => {
                self.guard.terminate().await;
                return Err(AssistantError::Cancelled);
            }
            () = tokio::time::sleep_until(self.deadline) => {
                self.guard.terminate().await;
                return Err(AssistantError::Timeout(format!(
                    "`{}` did not finish within {}", self.program, human_duration(self.limits.total_timeout)
                )));
            }
            () = tokio::time::sleep(idle) => {
                self.guard.terminate().await;
                return Err(AssistantError::Timeout(format!(
                    "`{}` printed nothing for {}", self.program, human_duration(idle)
                )));
            }
            read = self.stdout.next_line() => read,
        };
        match read {
            Ok(out) => Ok(out),
            Err(e) => {
                self.guard.terminate().await;
                Err(AssistantError::Protocol(format!("reading the output of `{}` failed: {e}", self.program)))
            }
        }
    }

    /// Waits up to [`ProcessLimits::exit_wait`] for the process to exit (stopping its
    /// group when it does not), then returns its exit code and stderr tail. Leftover
    /// members of its process group are killed.
    pub async fn finish(mut self) -> Exit {
        let status = match tokio::time::timeout(self.limits.exit_wait, self.guard.wait()).await {
            Ok(status) => status,
            Err(_) => {
                warn!(program = %self.program, "the assistant CLI did not exit after its result; stopping it");
                self.guard.terminate().await
            }
        };
        let stderr = match self.stderr.take() {
            // A grandchild may hold stderr open; do not wait for it long.
            Some(task) => tokio::time::timeout(Duration::from_secs(2), task).await.ok().and_then(Result::ok),
            None => None,
        };
        Exit { code: status.and_then(|s| s.code()), stderr: stderr.unwrap_or_default() }
    }

    /// The stderr tail so far, after stopping the process (used when a run fails early).
    pub async fn stop(mut self) -> Exit {
        let status = self.guard.terminate().await;
        let stderr = match self.stderr.take() {
            Some(task) => tokio::time::timeout(Duration::from_secs(2), task).await.ok().and_then(Result::ok),
            None => None,
        };
        Exit { code: status.and_then(|s| s.code()), stderr: stderr.unwrap_or_default() }
    }
}

/// Asks the kernel to `SIGKILL` the child when the thread that forked it exits
/// (`PR_SET_PDEATHSIG`, Linux), which [`spawn_on_lasting_thread`] makes Parley's exit, and
/// makes the child give up when Parley died between the fork and that request.
#[allow(unsafe_code)]
fn die_with_parent(cmd: &mut Command) {
    #[cfg(target_os = "linux")]
    {
        let parent = rustix::process::getpid();
        // SAFETY: the closure runs in the child between `fork` and `exec`, where only
        // async-signal-safe operations are allowed. It makes two raw system calls through
        // rustix (`prctl`, `getppid`), builds its errors from raw error numbers, and so
        // allocates nothing and takes no lock.
        unsafe {
            cmd.pre_exec(move || {
                rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
                if rustix::process::getppid() != Some(parent) {
                    return Err(rustix::io::Errno::SRCH.into());
                }
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = cmd;
}

/// Spawns `cmd` on a thread that lives as long as the process. The parent-death signal
/// fires when the *thread* that forked the child exits; runtime worker and blocking
/// threads may exit while Parley lives on, this one never does.
async fn spawn_on_lasting_thread(mut cmd: Command) -> std::io::Result<Child> {
    type Job = Box<dyn FnOnce() + Send>;
    static SPAWNER: OnceLock<std::sync::Mutex<std::sync::mpsc::Sender<Job>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let started = std::thread::Builder::new().name("parley-spawner".into()).spawn(move || {
            for job in rx {
                job();
            }
        });
        if let Err(e) = started {
            warn!(error = %e, "cannot start the spawner thread; assistant CLIs cannot start");
        }
        std::sync::Mutex::new(tx)
    });
    let runtime = tokio::runtime::Handle::current();
    let (done, result) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        // The child's pipes and exit status belong to the caller's runtime.
        let _entered = runtime.enter();
        let _ = done.send(cmd.spawn());
    });
    let sent = spawner.lock().unwrap_or_else(std::sync::PoisonError::into_inner).send(job);
    if sent.is_err() {
        return Err(std::io::Error::other("the spawner thread is gone"));
    }
    result.await.unwrap_or_else(|_| Err(std::io::Error::other("the spawner thread dropped the request")))
}

/// Owns the child and kills its process group (and other descendants) when the run
/// ends or is dropped.
#[derive(Debug)]
struct GroupGuard {
    child: Option<Child>,
    family: Family,
    grace: Duration,
    done: bool,
}

fn signal_group(pgid: Option<Pid>, signal: Signal) {
    if let Some(pgid) = pgid {
        match killpg(pgid, signal) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
            Err(e) => warn!(error = %e, ?signal, "signalling the assistant's process group failed"),
        }
    }
}

/// A process, told apart from a later one that reuses its pid by its start time
/// (`/proc/PID/stat` field 22, in clock ticks since boot).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Proc {
    pid: i32,
    start: u64,
}

/// `(pid, parent pid, start time)` of every process, from `/proc/*/stat`; empty where
/// there is no `/proc`.
fn process_table() -> Vec<(i32, i32, u64)> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            // After the command name (which may hold spaces and parentheses): state (3),
            // ppid (4), … starttime (22).
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            Some((pid, fields.get(1)?.parse().ok()?, fields.get(19)?.parse().ok()?))
        })
        .collect()
}

/// The CLI's process group and the descendants seen so far.
#[derive(Debug, Clone)]
struct Family {
    pgid: Option<Pid>,
    leader: Option<Proc>,
    descendants: Vec<Proc>,
}

impl Family {
    fn new(pgid: Option<Pid>) -> Self {
        let leader = pgid.and_then(|p| {
            let pid = p.as_raw();
            process_table().into_iter().find(|(id, _, _)| *id == pid).map(|(pid, _, start)| Proc { pid, start })
        });
        Self { pgid, leader, descendants: Vec::new() }
    }

    /// Adds the live descendants of the leader and of those already known (which keeps
    /// the orphans among them); forgets those that are gone.
    fn collect(&mut self) {
        let table = process_table();
        let alive = |p: &Proc| table.iter().any(|(pid, _, start)| *pid == p.pid && *start == p.start);
        self.descendants.retain(|p| alive(p));
        let mut parents: Vec<i32> =
            self.leader.iter().chain(&self.descendants).filter(|p| alive(p)).map(|p| p.pid).collect();
        while let Some(parent) = parents.pop() {
            for &(pid, ppid, start) in &table {
                if ppid == parent && !self.descendants.iter().any(|d| d.pid == pid) {
                    self.descendants.push(Proc { pid, start });
                    parents.push(pid);
                }
            }
        }
    }

    /// Signals the group, then each known descendant that is still the same process.
    fn signal(&self, signal: Signal) {
        signal_group(self.pgid, signal);
        if self.descendants.is_empty() {
            return;
        }
        let table = process_table();
        for d in &self.descendants {
            if table.iter().any(|(pid, _, start)| *pid == d.pid && *start == d.start) {
                let _ = nix::sys::signal::kill(Pid::from_raw(d.pid), signal);
            }
        }
    }
}

impl GroupGuard {
    /// Waits for the child to exit, then kills what is left of its group and of its
    /// descendants.
    async fn wait(&mut self) -> Option<ExitStatus> {
        // Seen while the CLI lives: its children lose their parent link when it exits.
        self.family.collect();
        let status = match self.child.as_mut() {
            Some(child) => child.wait().await.ok(),
            None => None,
        };
        self.family.collect();
        self.family.signal(Signal::SIGKILL);
        self.done = true;
        status
    }

    /// `SIGTERM` to the group and the descendants, the grace period, then `SIGKILL`.
    async fn terminate(&mut self) -> Option<ExitStatus> {
        if self.done {
            return None;
        }
        self.family.collect();
        self.family.signal(Signal::SIGTERM);
        let status = match self.child.as_mut() {
            Some(child) => match tokio::time::timeout(self.grace, child.wait()).await {
                Ok(s) => s.ok(),
                Err(_) => {
                    self.family.collect();
                    self.family.signal(Signal::SIGKILL);
                    child.wait().await.ok()
                }
            },
            None => None,
        };
        self.family.collect();
        self.family.signal(Signal::SIGKILL);
        self.done = true;
        status
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut family = self.family.clone();
        family.collect();
        family.signal(Signal::SIGTERM);
        let child = self.child.take();
        let grace = self.grace;
        match (tokio::runtime::Handle::try_current(), child) {
            (Ok(handle), Some(mut child)) => {
                handle.spawn(
                    async move {
                        let _ = tokio::time::timeout(grace, child.wait()).await;
                        family.collect();
                        family.signal(Signal::SIGKILL);
                        // Reaps it; `kill_on_drop` covers a child that ignored both signals.
                        let _ = child.wait().await;
                    }
                    .in_current_span(),
                );
            }
            // No runtime: no grace period.
            _ => family.signal(Signal::SIGKILL),
        }
    }
}

/// Reads lines of at most `max` bytes; longer ones are skipped and reported.
///
/// Hand-written rather than `FramedRead` with `tokio_util::codec::LinesCodec::new_with_max_length`,
/// because that codec (tokio-util 0.7.20, checked on `short\n<26-byte line>\nok\n` and on
/// `a\xffb\nok\n`) does not keep this reader's behaviour on hostile output:
/// - after an over-long line it yields `Err(MaxLineLengthExceeded)` and then `None`, which
///   reads as the end of stdout, before resuming with the next line; the run would end at
///   the first over-long line instead of skipping it;
/// - it does not say how long the skipped line was ([`Output::Oversized`] does);
/// - a line that is not valid UTF-8 is an error (and again a `None`) instead of a line
///   with U+FFFD in place of the bad bytes.
#[derive(Debug)]
struct LineReader<R> {
    reader: BufReader<R>,
    max: usize,
    buf: Vec<u8>,
    overflow: usize,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    fn new(reader: R, max: usize) -> Self {
        Self { reader: BufReader::new(reader), max, buf: Vec::new(), overflow: 0 }
    }

    fn take(&mut self) -> Output {
        let out = if self.overflow > 0 {
            Output::Oversized { bytes: self.overflow + self.buf.len() }
        } else {
            let mut line = String::from_utf8_lossy(&self.buf).into_owned();
            if line.ends_with('\r') {
                line.pop();
            }
            Output::Line(line)
        };
        self.buf.clear();
        self.overflow = 0;
        out
    }

    /// Cancel-safe: a partly read line stays buffered in `self`.
    async fn next_line(&mut self) -> std::io::Result<Output> {
        loop {
            let available = self.reader.fill_buf().await?;
            if available.is_empty() {
                if self.buf.is_empty() && self.overflow == 0 {
                    return Ok(Output::Eof);
                }
                return Ok(self.take());
            }
            let (piece, found, used) = match available.iter().position(|b| *b == b'\n') {
                Some(i) => (&available[..i], true, i + 1),
                None => (available, false, available.len()),
            };
            if self.overflow > 0 || self.buf.len() + piece.len() > self.max {
                self.overflow += self.buf.len() + piece.len();
                self.buf.clear();
            } else {
                self.buf.extend_from_slice(piece);
            }
            self.reader.consume(used);
            if found {
                return Ok(self.take());
            }
        }
    }
}

/// Reads a stream to its end, keeping the last `max` bytes, as trimmed text.
async fn read_tail(mut reader: impl AsyncRead + Unpin, max: usize) -> String {
    let mut tail: VecDeque<u8> = VecDeque::with_capacity(max.min(64 * 1024));
    let mut chunk = [0u8; 4096];
    loop {
        match reader.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                tail.extend(&chunk[..n]);
                while tail.len() > max {
                    tail.pop_front();
                }
            }
        }
    }
    let bytes: Vec<u8> = tail.into_iter().collect();
    String::from_utf8_lossy(&bytes).trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn long_lines_are_skipped_and_reading_goes_on() {
        let input: &[u8] = b"short\nthis line is far too long\r\nok\r\nlast-without-newline";
        let mut reader = LineReader::new(input, 10);
        assert_eq!(reader.next_line().await.ok(), Some(Output::Line("short".into())));
        assert_eq!(reader.next_line().await.ok(), Some(Output::Oversized { bytes: 26 }));
        assert_eq!(reader.next_line().await.ok(), Some(Output::Line("ok".into())));
        assert_eq!(reader.next_line().await.ok(), Some(Output::Oversized { bytes: 20 }));
        assert_eq!(reader.next_line().await.ok(), Some(Output::Eof));
    }

    /// A started CLI process counts as a cold start and as live until its run lets go of
    /// it (a recorder local to this thread, so other tests' processes do not count).
    #[test]
    fn a_started_process_counts_as_a_cold_start_and_as_live_until_let_go() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let sample = |name: &str| {
            let key = format!("{name}{{assistant=\"claude\"}} ");
            handle.render().lines().find_map(|l| l.strip_prefix(&key).map(str::to_owned))
        };
        let live = crate::metrics::PROCESSES_LIVE;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        metrics::with_local_recorder(&recorder, || {
            runtime.block_on(async {
                let spec = ProcessSpec {
                    program: "cat".into(),
                    args: Vec::new(),
                    cwd: None,
                    env: vec![("PATH".into(), std::env::var_os("PATH").unwrap_or_default())],
                    run_id: Uuid::new_v4(),
                    stdin: "hello\n".into(),
                    limits: ProcessLimits::default(),
                    assistant: "claude",
                };
                let mut process = CliProcess::spawn(spec).await.expect("cat starts");
                assert_eq!(sample(live).as_deref(), Some("1"));
                let cancel = CancellationToken::new();
                assert_eq!(process.next(&cancel).await.ok(), Some(Output::Line("hello".into())));
                assert_eq!(process.finish().await.code, Some(0));
            });
        });
        assert_eq!(sample(live).as_deref(), Some("0"), "let go with its run");
        assert_eq!(sample(crate::metrics::PROCESSES_COLD_STARTS).as_deref(), Some("1"));
    }

    /// A reader handing out its bytes in pieces of the given sizes (cycled), as a pipe
    /// does, so lines straddle buffer refills.
    struct Trickle {
        data: Vec<u8>,
        pos: usize,
        pieces: Vec<usize>,
        turn: usize,
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            let piece = self.pieces[self.turn % self.pieces.len()].max(1);
            self.turn += 1;
            let n = piece.min(buf.remaining()).min(self.data.len() - self.pos);
            let start = self.pos;
            buf.put_slice(&self.data[start..start + n]);
            self.pos += n;
            std::task::Poll::Ready(Ok(()))
        }
    }

    /// What the reader must make of one line (without its `\n`) under `max`.
    fn expected(line: &[u8], max: usize) -> Output {
        if line.len() > max {
            return Output::Oversized { bytes: line.len() };
        }
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        Output::Line(String::from_utf8_lossy(line).into_owned())
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Any bytes, any bound, any piece sizes: each line comes out whole when it fits
        /// the bound (invalid UTF-8 replaced, at most `max` characters), else as
        /// `Oversized` with its exact length, in order, then `Eof`.
        #[test]
        fn lines_are_capped_at_the_bound_and_reading_goes_on(
            lines in proptest::collection::vec(
                proptest::collection::vec(proptest::prop_oneof![
                    proptest::prelude::any::<u8>(), proptest::prelude::Just(b'\r'), proptest::prelude::Just(0u8)
                ], 0..300),
                0..12,
            ),
            max in 0usize..200,
            pieces in proptest::collection::vec(1usize..64, 1..8),
            final_newline in proptest::prelude::any::<bool>(),
        ) {
            let lines: Vec<Vec<u8>> =
                lines.into_iter().map(|l| l.into_iter().filter(|b| *b != b'\n').collect()).collect();
            let mut data = lines.join(&b'\n');
            if final_newline && !lines.is_empty() {
                data.push(b'\n');
            }
            // A last line with no bytes and no newline is not a line.
            let mut want: Vec<Output> = lines.iter().map(|l| expected(l, max)).collect();
            if !final_newline && lines.last().is_some_and(Vec::is_empty) {
                want.pop();
            }
            want.push(Output::Eof);
            let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
            let got = rt.block_on(async {
                let mut reader = LineReader::new(Trickle { data, pos: 0, pieces, turn: 0 }, max);
                let mut got = Vec::new();
                loop {
                    let out = reader.next_line().await.expect("read");
                    if let Output::Line(l) = &out {
                        assert!(l.chars().count() <= max, "a line longer than the bound came out");
                    }
                    let eof = out == Output::Eof;
                    got.push(out);
                    if eof || got.len() > want.len() {
                        break got;
                    }
                }
            });
            proptest::prop_assert_eq!(got, want);
        }
    }

    #[tokio::test]
    async fn stderr_tail_keeps_the_end() {
        let input: &[u8] = b"0123456789abcdef\n";
        assert_eq!(read_tail(input, 7).await, "abcdef");
    }

    #[test]
    fn environment_is_an_allow_list_with_explicit_values_winning() {
        let vars = [
            ("PATH", "/bin"),
            ("DATABASE_URL", "postgres://secret"),
            ("TELEGRAM_BOT_TOKEN", "123:abc"),
            ("ANTHROPIC_API_KEY", "sk-inherited"),
            ("CLAUDE_CONFIG_DIR", "/inherited"),
            ("EXTRA_ALLOWED", "yes"),
        ]
        .map(|(k, v)| (OsString::from(k), OsString::from(v)));
        let env = cli_env(
            vars,
            &["EXTRA_ALLOWED".to_owned(), "CLAUDE_CONFIG_DIR".to_owned()],
            &["ANTHROPIC_"],
            &[("CLAUDE_CONFIG_DIR".to_owned(), "/configured".to_owned())],
        );
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.to_string_lossy().into_owned());
        assert_eq!(get("PATH").as_deref(), Some("/bin"));
        assert_eq!(get("ANTHROPIC_API_KEY").as_deref(), Some("sk-inherited"));
        assert_eq!(get("EXTRA_ALLOWED").as_deref(), Some("yes"));
        assert_eq!(get("CLAUDE_CONFIG_DIR").as_deref(), Some("/configured"));
        assert_eq!(env.iter().filter(|(n, _)| n == "CLAUDE_CONFIG_DIR").count(), 1);
        assert_eq!(get("DATABASE_URL"), None);
        assert_eq!(get("TELEGRAM_BOT_TOKEN"), None);
    }
}
