//! Run markers: two environment variables that tie every process of an assistant run —
//! the CLI and whatever it starts, in any process group or session — to the run and to
//! the Parley process that started it, and the `/proc` scans that find and kill them.
//!
//! - [`RUN_ID_ENV`] names the run (a UUID the orchestrator records with the running turn);
//! - [`OWNER_ENV`] names the Parley process, as `PID:START` (`START` is field 22 of
//!   `/proc/PID/stat`, in clock ticks since boot, so a later process that reuses the PID
//!   is told apart).
//!
//! Children inherit their parent's environment, so these reach every descendant unless
//! one deliberately clears its environment. claude-code 2.1.329, for example, starts
//! each Bash tool call in a session of its own (`setsid`: Node's `detached: true`) with
//! the CLI's environment, so the tool escapes the CLI's process group and, once the CLI
//! dies, its parent link — but not its markers.
//!
//! Processes are signalled through a pidfd opened *before* their environment is read,
//! so a PID reused between the scan and the signal is never hit. Only processes whose
//! `/proc/PID/environ` Parley may read (its own user's, or all as root) in its own PID
//! namespace are found (Linux only; elsewhere the scans find nothing).

use std::collections::{HashMap, HashSet};
use std::os::fd::OwnedFd;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Duration;

use rustix::process::{Pid, PidfdFlags, Signal, pidfd_open, pidfd_send_signal};
use tokio::time::Instant;
use tracing::{debug, warn};
use uuid::Uuid;

/// The environment variable naming the run a process belongs to (a UUID).
pub const RUN_ID_ENV: &str = "PARLEY_RUN_ID";
/// The environment variable naming the Parley process that started the run, `PID:START`.
pub const OWNER_ENV: &str = "PARLEY_OWNER";

/// This process's identity as [`OWNER_ENV`] holds it, `PID:START`.
#[must_use]
pub fn owner() -> &'static str {
    static OWNER: OnceLock<String> = OnceLock::new();
    OWNER.get_or_init(|| {
        let pid = std::process::id();
        let start = i32::try_from(pid).ok().and_then(start_ticks).unwrap_or(0);
        format!("{pid}:{start}")
    })
}

/// Field 22 of `/proc/PID/stat`: when the process started, in clock ticks since boot.
fn start_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name (which may hold spaces and parentheses): state is field 3.
    stat.rsplit_once(')')?.1.split_whitespace().nth(19)?.parse().ok()
}

/// Whether the Parley process named by an [`OWNER_ENV`] value still runs.
fn owner_alive(owner: &str) -> bool {
    let Some((pid, start)) = owner.split_once(':') else { return false };
    let (Ok(pid), Ok(start)) = (pid.parse::<i32>(), start.parse::<u64>()) else { return false };
    start_ticks(pid) == Some(start)
}

/// The runs of this process that started at least one process: [`end_run`] sweeps
/// only those, so runs without processes (API assistants) cost no `/proc` scan.
fn spawned() -> &'static Mutex<HashSet<Uuid>> {
    static SPAWNED: OnceLock<Mutex<HashSet<Uuid>>> = OnceLock::new();
    SPAWNED.get_or_init(Mutex::default)
}

/// Records that run `run_id` started a process (called by [`crate::process::CliProcess`]).
pub(crate) fn note_spawned(run_id: Uuid) {
    spawned().lock().unwrap_or_else(PoisonError::into_inner).insert(run_id);
}

/// The warm processes' runs ([`crate::warm`]): a warm process carries a run ID
/// of its own, which outlives the turns it answers.
#[derive(Debug, Default)]
struct WarmRuns {
    /// Turn run → the warm run that served it, and whether the turn called a tool
    /// (until [`end_run`]).
    served: HashMap<Uuid, (Uuid, bool)>,
    /// Warm run → its CLI, while the process is kept for the next turn.
    kept: HashMap<Uuid, Kept>,
}

fn warm_runs() -> &'static Mutex<WarmRuns> {
    static WARM: OnceLock<Mutex<WarmRuns>> = OnceLock::new();
    WARM.get_or_init(Mutex::default)
}

/// Records that turn run `run_id` is served by the warm process of run `warm_run_id`:
/// [`end_run`] of the turn then ends the warm run's other processes (the tools it
/// started), and the warm process itself unless it was kept ([`keep_warm`]).
pub fn serve_with_warm(run_id: Uuid, warm_run_id: Uuid) {
    warm_runs().lock().unwrap_or_else(PoisonError::into_inner).served.insert(run_id, (warm_run_id, false));
}

/// Records that turn run `run_id`, served by a warm process, called a tool: its
/// [`end_run`] then looks for the tool's processes. A turn without tool calls started no
/// process, so ending it costs no `/proc` scan while its warm process is kept.
pub fn warm_turn_used_tools(run_id: Uuid) {
    if let Some((_, tools)) = warm_runs().lock().unwrap_or_else(PoisonError::into_inner).served.get_mut(&run_id) {
        *tools = true;
    }
}

/// A kept warm process: what [`end_run`] of a turn it served spares.
#[derive(Debug, Clone, Copy)]
struct Kept {
    /// The CLI Parley started.
    pid: i32,
    /// When the CLI was ready for its first turn, in clock ticks since boot: the run's
    /// processes started by then are the CLI's own (the npm launcher of `codex` starts
    /// the native binary under it), not tools of a turn.
    ready_ticks: Option<u64>,
}

impl Kept {
    fn spares(&self, pid: i32) -> bool {
        pid == self.pid || self.ready_ticks.is_some_and(|ready| start_ticks(pid).is_some_and(|s| s <= ready))
    }
}

/// Records that the warm process `pid` of run `warm_run_id` is kept alive between
/// turns: [`end_run`] of a turn it served spares it, and with `ready_ticks` (see
/// [`now_ticks`]) also the run's processes that started before then.
pub fn keep_warm(warm_run_id: Uuid, pid: i32, ready_ticks: Option<u64>) {
    warm_runs().lock().unwrap_or_else(PoisonError::into_inner).kept.insert(warm_run_id, Kept { pid, ready_ticks });
}

/// Now, in the clock ticks since boot that field 22 of `/proc/PID/stat` counts (from
/// `/proc/uptime` and `sysconf(_SC_CLK_TCK)`); `None` when unreadable.
#[must_use]
pub fn now_ticks() -> Option<u64> {
    let uptime = std::fs::read_to_string("/proc/uptime").ok()?;
    let seconds: f64 = uptime.split_whitespace().next()?.parse().ok()?;
    let per_second = rustix::param::clock_ticks_per_second();
    // Whole ticks: uptime's hundredths of a second never round into the next tick.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
    Some((seconds * per_second as f64) as u64)
}

/// Records that the warm process of run `warm_run_id` is no longer kept: the next
/// [`end_run`] of a turn it served kills all of the warm run's processes.
pub fn release_warm(warm_run_id: Uuid) {
    warm_runs().lock().unwrap_or_else(PoisonError::into_inner).kept.remove(&warm_run_id);
}

/// The markers found in one process's environment.
#[derive(Debug, Default, PartialEq, Eq)]
struct Markers {
    run_id: Option<String>,
    owner: Option<String>,
}

impl Markers {
    /// Parses a `/proc/PID/environ` image (`NAME=value` entries separated by NUL).
    fn parse(environ: &[u8]) -> Self {
        let mut found = Self::default();
        for entry in environ.split(|b| *b == 0) {
            let value = |name: &str| {
                entry
                    .strip_prefix(name.as_bytes())
                    .and_then(|rest| rest.strip_prefix(b"="))
                    .map(|v| String::from_utf8_lossy(v).into_owned())
            };
            if let Some(v) = value(RUN_ID_ENV) {
                found.run_id = Some(v);
            } else if let Some(v) = value(OWNER_ENV) {
                found.owner = Some(v);
            }
        }
        found
    }

    fn read(pid: i32) -> Self {
        std::fs::read(format!("/proc/{pid}/environ")).map(|e| Self::parse(&e)).unwrap_or_default()
    }
}

/// Every process (not this one) whose markers satisfy `wanted`, each pinned by a pidfd
/// opened before its markers were read.
fn find(wanted: &dyn Fn(&Markers) -> bool) -> Vec<(i32, OwnedFd)> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    let me = i32::try_from(std::process::id()).unwrap_or(0);
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != me)
        .filter_map(|pid| {
            let fd = pidfd_open(Pid::from_raw(pid)?, PidfdFlags::empty()).ok()?;
            wanted(&Markers::read(pid)).then_some((pid, fd))
        })
        .collect()
}

/// `SIGKILL`s every process matching `wanted`, then scans again until none is left or
/// `wait` has passed. Returns how many processes were killed.
async fn kill_matching(
    what: String,
    wanted: impl Fn(&Markers) -> bool + Send + Sync + 'static,
    wait: Duration,
) -> usize {
    let me = i32::try_from(std::process::id()).unwrap_or(0);
    kill_matching_except(what, wanted, move |pid| pid == me, wait).await
}

/// [`kill_matching`], sparing the processes `spare` accepts (a kept warm process, or
/// this one).
async fn kill_matching_except(
    what: String,
    wanted: impl Fn(&Markers) -> bool + Send + Sync + 'static,
    spare: impl Fn(i32) -> bool,
    wait: Duration,
) -> usize {
    let wanted = std::sync::Arc::new(wanted);
    let deadline = Instant::now() + wait;
    let mut killed: HashSet<i32> = HashSet::new();
    loop {
        let w = std::sync::Arc::clone(&wanted);
        let found = tokio::task::spawn_blocking(move || find(&*w)).await.unwrap_or_default();
        let found: Vec<(i32, OwnedFd)> = found.into_iter().filter(|(pid, _)| !spare(*pid)).collect();
        if found.is_empty() {
            return killed.len();
        }
        for (pid, fd) in &found {
            match pidfd_send_signal(fd, Signal::KILL) {
                Ok(()) => {
                    if killed.insert(*pid) {
                        debug!(pid, %what, "killed a process of an assistant run");
                    }
                }
                Err(e) if e == rustix::io::Errno::SRCH => {}
                Err(e) => warn!(pid, %what, error = %e, "could not kill a process of an assistant run"),
            }
        }
        if Instant::now() >= deadline {
            warn!(%what, left = found.len(), "processes of an assistant run survived SIGKILL");
            return killed.len();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Kills every process of run `run_id` — wherever it is: any process group, any
/// session, any parent — and waits up to `wait` for them to be gone. Returns how many
/// were killed.
///
/// A turn run served by a warm process of this Parley ([`serve_with_warm`]) takes the
/// warm process down with it: a run killed from outside (an expired lease) cannot leave
/// its session's process alive.
pub async fn kill_run(run_id: Uuid, wait: Duration) -> usize {
    let warm = warm_runs().lock().unwrap_or_else(PoisonError::into_inner).served.get(&run_id).map(|(w, _)| *w);
    let mut killed = kill_run_only(run_id, None, wait).await;
    if let Some(warm) = warm {
        release_warm(warm);
        killed += kill_run_only(warm, None, wait).await;
    }
    killed
}

/// Kills the processes carrying run ID `run_id`, except those of the kept warm process
/// `spare`.
async fn kill_run_only(run_id: Uuid, spare: Option<Kept>, wait: Duration) -> usize {
    let id = run_id.to_string();
    let me = i32::try_from(std::process::id()).unwrap_or(0);
    let spared = move |pid: i32| pid == me || spare.is_some_and(|k| k.spares(pid));
    kill_matching_except(format!("run {run_id}"), move |m| m.run_id.as_deref() == Some(id.as_str()), spared, wait).await
}

/// Kills every process of a run whose Parley process is no longer alive: what a
/// crashed Parley (any worker id, this host) left behind. Waits up to `wait` for them
/// to be gone. Returns how many were killed.
pub async fn kill_orphans(wait: Duration) -> usize {
    let me = owner().to_owned();
    kill_matching(
        "orphans of stopped Parley processes".into(),
        move |m| m.owner.as_deref().is_some_and(|o| o != me && !owner_alive(o)),
        wait,
    )
    .await
}

/// Kills every process of the runs that the Parley process `owner` (an [`OWNER_ENV`]
/// value) started, and waits up to `wait` for them to be gone: what the watchdog of a
/// server that just died does. Returns how many were killed.
pub async fn kill_owned_by(owner: &str, wait: Duration) -> usize {
    let owner = owner.to_owned();
    kill_matching(format!("runs of Parley process {owner}"), move |m| m.owner.as_deref() == Some(owner.as_str()), wait)
        .await
}

/// Ends run `run_id`: when it started processes, kills whatever of them is left (see
/// [`kill_run`]) and waits for them to be gone, for up to `wait`. Returns how many were
/// killed. Call it when the run's stream was dropped or finished, before anything
/// else may run in the same assistant session.
///
/// A turn served by a warm process ([`serve_with_warm`]) also ends the warm run's
/// processes — the tools the CLI started for the turn — but spares the CLI itself when
/// it is kept for the next turn ([`keep_warm`]); a warm process that is no longer kept
/// (the turn failed, was cancelled, or the process was dropped) is killed with them.
/// See `docs/architecture.md#warm-processes`.
pub async fn end_run(run_id: Uuid, wait: Duration) -> usize {
    let had_processes = spawned().lock().unwrap_or_else(PoisonError::into_inner).remove(&run_id);
    let warm = {
        let mut runs = warm_runs().lock().unwrap_or_else(PoisonError::into_inner);
        runs.served.remove(&run_id).map(|(warm, tools)| (warm, tools, runs.kept.get(&warm).copied()))
    };
    let mut killed = if had_processes { kill_run_only(run_id, None, wait).await } else { 0 };
    match warm {
        // Kept, and no tool was called: nothing of the turn can be left.
        Some((_, false, Some(_))) | None => {}
        Some((warm, _, kept)) => killed += kill_run_only(warm, kept, wait).await,
    }
    killed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_are_read_from_an_environ_image() {
        let environ = b"PATH=/bin\0PARLEY_RUN_ID=abc\0X=PARLEY_OWNER=no\0PARLEY_OWNER=12:34\0PARLEY_RUN_IDX=no\0";
        assert_eq!(Markers::parse(environ), Markers { run_id: Some("abc".into()), owner: Some("12:34".into()) });
        assert_eq!(Markers::parse(b""), Markers::default());
    }

    #[test]
    fn this_process_is_an_alive_owner_and_a_made_up_one_is_not() {
        assert!(owner_alive(owner()), "{}", owner());
        let (pid, start) = owner().split_once(':').expect("PID:START");
        let later: u64 = start.parse::<u64>().expect("ticks") + 1;
        assert!(!owner_alive(&format!("{pid}:{later}")), "the same PID started later is another process");
        assert!(!owner_alive("garbage"));
    }
}
