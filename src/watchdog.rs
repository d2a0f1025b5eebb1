//! The server's watchdog: a small process (`parley watchdog`, hidden) that `parley serve`
//! starts beside itself and that outlives it, to kill the assistant processes the server
//! leaves behind when it dies — however it dies, `SIGKILL` included.
//!
//! The CLIs die with the server on their own (parent-death signal), but tools they start
//! in a session of their own are not the server's children. The watchdog holds the read
//! end of a pipe whose write end only the server holds; when the server's process ends,
//! the kernel closes it, the watchdog reads end-of-file, kills every process whose
//! `PARLEY_OWNER` names the server (see `parley_assistant::run_marker`) and exits. It
//! runs in a process group of its own, so a terminal's ctrl-c reaches the server (which
//! then shuts down gracefully) and not it. Should the watchdog die too (an OOM kill of
//! both), the next server to start on the host kills those processes instead.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{ChildStdin, Command, Stdio};
use std::time::Duration;

use parley_assistant::run_marker;
use tracing::{info, warn};

use crate::Failure;

/// How long the watchdog waits for the processes it killed to be gone.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// Starts this server's watchdog. Returns the write end of its pipe: keep it open for
/// as long as the server runs (dropping it makes the watchdog clean up and exit). `None`
/// (with a warning) when it cannot be started.
pub fn start() -> Option<ChildStdin> {
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            warn!(error = %e, "cannot start the watchdog (no path to this executable); tools of a crashed server are killed at the next start only");
            return None;
        }
    };
    let started = Command::new(exe)
        .args(["watchdog", "--owner", run_marker::owner()])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .process_group(0)
        .spawn();
    match started {
        Ok(mut child) => {
            info!(
                pid = child.id(),
                "watchdog started: it kills what this server's assistants leave if the server dies"
            );
            child.stdin.take()
        }
        Err(e) => {
            warn!(error = %e, "cannot start the watchdog; tools of a crashed server are killed at the next start only");
            None
        }
    }
}

/// `parley watchdog --owner PID:START`: waits until its standard input closes, then
/// kills the processes of the runs that the server `owner` started.
pub async fn run(owner: String) -> Result<(), Failure> {
    let closed = tokio::task::spawn_blocking(|| {
        let mut buf = [0u8; 64];
        let mut stdin = std::io::stdin();
        while matches!(stdin.read(&mut buf), Ok(n) if n > 0) {}
    })
    .await;
    if let Err(e) = closed {
        return Err(Failure::failed(format!("watchdog: {e}")));
    }
    let killed = run_marker::kill_owned_by(&owner, KILL_WAIT).await;
    if killed > 0 {
        warn!(processes = killed, server = %owner, "the server stopped; killed the assistant processes it left behind");
    }
    Ok(())
}
