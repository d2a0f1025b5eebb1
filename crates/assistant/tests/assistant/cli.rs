//! The CLI adapters' process handling, against fake CLIs (shell scripts): prompt on
//! stdin, arguments, the environment allow-list, cancellation and timeouts killing the
//! whole process group, and dropping a run's stream.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use parley_assistant::{Assistant, AssistantError, Chunk, Claude, ClaudeConfig, ProcessLimits, RunRequest};
use tokio_util::sync::CancellationToken;

use crate::fixtures_dir;

/// A scratch directory removed at drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("parley-assistant-{tag}-{}", uuid_like()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn uuid_like() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{}-{nanos}", std::process::id())
}

/// Writes an executable shell script.
pub fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

pub fn request(prompt: &str, resume: Option<&str>, cwd: Option<PathBuf>) -> RunRequest {
    RunRequest {
        prompt: prompt.into(),
        message: prompt.into(),
        history_messages: 0,
        resume: resume.map(str::to_owned),
        cwd,
        cancel: CancellationToken::new(),
        run_id: uuid::Uuid::new_v4(),
        settings: parley_assistant::RunSettings::default(),
        warm: None,
    }
}

pub fn pid_alive(pid: i32) -> bool {
    // A zombie is as good as dead: it runs nothing.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'),
        Err(_) => false,
    }
}

/// Waits up to 5 s for the processes to die (a killed process needs a moment to be
/// reaped by its new parent); returns those still alive.
pub async fn wait_dead(mut pids: Vec<i32>) -> Vec<i32> {
    for _ in 0..50 {
        pids.retain(|p| pid_alive(*p));
        if pids.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    pids
}

fn read_pids(path: &Path) -> Vec<i32> {
    std::fs::read_to_string(path).unwrap_or_default().split_whitespace().filter_map(|p| p.parse().ok()).collect()
}

async fn wait_for_file(path: &Path) {
    for _ in 0..100 {
        if std::fs::metadata(path).is_ok_and(|m| m.len() > 0) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{} never appeared", path.display());
}

fn claude_with(binary: PathBuf, limits: ProcessLimits) -> Claude {
    Claude::new(ClaudeConfig {
        binary,
        config_dir: Some(PathBuf::from("/configured/claude")),
        partial_messages: false,
        model: Some("claude-test".into()),
        limits,
        ..ClaudeConfig::default()
    })
}

#[tokio::test]
async fn claude_gets_the_prompt_on_stdin_and_an_allow_listed_environment() {
    let dir = Scratch::new("claude-stdin");
    let fixture = fixtures_dir().join("claude-resume-ok.jsonl");
    let bin = script(
        &dir.0,
        "claude",
        &format!(
            "cat > '{d}/stdin'; printf '%s\\n' \"$@\" > '{d}/args'; env > '{d}/env'; pwd > '{d}/cwd'; cat '{f}'",
            d = dir.0.display(),
            f = fixture.display()
        ),
    );
    let cwd = dir.0.join("conversation");
    let claude = claude_with(bin, ProcessLimits::default());
    let prompt = "a prompt with 'quotes' and\nnewlines — never in argv";
    let req = request(prompt, Some("d5f45b2a-004a-48c7-ab76-1d9863355e6e"), Some(cwd.clone()));
    let run_id = req.run_id;
    let chunks: Vec<_> = claude.run(req).collect().await;
    assert!(matches!(chunks.last(), Some(Ok(Chunk::Completed { .. }))), "{chunks:?}");
    assert_eq!(std::fs::read_to_string(dir.0.join("stdin")).unwrap(), prompt);
    let args = std::fs::read_to_string(dir.0.join("args")).unwrap();
    let args: Vec<&str> = args.lines().collect();
    assert_eq!(
        args,
        [
            "-p",
            "--output-format",
            "stream-json",
            "--verbose",
            "--model",
            "claude-test",
            "--resume",
            "d5f45b2a-004a-48c7-ab76-1d9863355e6e"
        ]
    );
    let env = std::fs::read_to_string(dir.0.join("env")).unwrap();
    assert!(env.lines().any(|l| l == "CLAUDE_CONFIG_DIR=/configured/claude"), "{env}");
    assert!(env.lines().any(|l| l.starts_with("PATH=")), "{env}");
    // The run's markers, which every process of the run inherits.
    assert!(env.lines().any(|l| l == format!("PARLEY_RUN_ID={run_id}")), "{env}");
    let owner = format!("PARLEY_OWNER={}", parley_assistant::run_marker::owner());
    assert!(env.lines().any(|l| l == owner), "{env}");
    // Cargo gives the test process these; the CLI must not inherit them.
    assert!(!env.contains("CARGO_MANIFEST_DIR"), "{env}");
    assert!(!env.contains("CARGO_PKG_NAME"), "{env}");
    let cwd_seen = std::fs::read_to_string(dir.0.join("cwd")).unwrap();
    assert_eq!(cwd_seen.trim(), cwd.display().to_string());
}

/// The real `--session-id` capture (claude-code 2.1.329), whose init reports the ID
/// passed; a fake CLI that replays it with the passed ID (or as captured with `echo`).
fn session_id_cli(dir: &Path, echo: bool) -> PathBuf {
    let fixture = fixtures_dir().join("claude-session-id-new.jsonl");
    let replay = if echo {
        format!("sed \"s/11111111-2222-4333-8444-555555555555/$id/g\" '{}'", fixture.display())
    } else {
        format!("cat '{}'", fixture.display())
    };
    script(
        dir,
        "claude",
        &format!(
            "cat > /dev/null; printf '%s\\n' \"$@\" > '{d}/args'\n\
             id=''; prev=''; for a in \"$@\"; do [ \"$prev\" = --session-id ] && id=\"$a\"; prev=\"$a\"; done\n\
             {replay}",
            d = dir.display()
        ),
    )
}

#[tokio::test]
async fn a_fresh_claude_session_runs_under_an_id_parley_assigned_and_announced_first() {
    let dir = Scratch::new("claude-session-id");
    let claude = claude_with(session_id_cli(&dir.0, true), ProcessLimits::default());
    let chunks: Vec<_> = claude.run(request("hi", None, None)).collect().await;
    let args = std::fs::read_to_string(dir.0.join("args")).unwrap();
    let args: Vec<&str> = args.lines().collect();
    let at = args.iter().position(|a| *a == "--session-id").expect("--session-id passed");
    let assigned = args[at + 1];
    assert!(uuid::Uuid::parse_str(assigned).is_ok_and(|u| u.get_version_num() == 4), "{assigned}");
    assert!(!args.contains(&"--resume"), "{args:?}");
    let sessions: Vec<&Chunk> = chunks.iter().flatten().filter(|c| matches!(c, Chunk::SessionStarted { .. })).collect();
    assert_eq!(sessions, [&Chunk::SessionStarted { id: assigned.into() }], "announced once: {chunks:?}");
    assert_eq!(chunks.first(), Some(&Ok(Chunk::SessionStarted { id: assigned.into() })), "first: {chunks:?}");
    assert!(
        matches!(chunks.last(), Some(Ok(Chunk::Completed { session_id: Some(id), .. })) if id == assigned),
        "{chunks:?}"
    );
}

#[tokio::test]
async fn an_init_reporting_another_session_than_the_assigned_one_wins() {
    let dir = Scratch::new("claude-session-id-other");
    let claude = claude_with(session_id_cli(&dir.0, false), ProcessLimits::default());
    let chunks: Vec<_> = claude.run(request("hi", None, None)).collect().await;
    let reported = "11111111-2222-4333-8444-555555555555";
    let sessions: Vec<String> = chunks
        .iter()
        .flatten()
        .filter_map(|c| if let Chunk::SessionStarted { id } = c { Some(id.clone()) } else { None })
        .collect();
    assert_eq!(sessions.len(), 2, "the assigned ID, then the reported one: {chunks:?}");
    assert_ne!(sessions[0], reported);
    assert_eq!(sessions[1], reported);
    assert!(
        matches!(chunks.last(), Some(Ok(Chunk::Completed { session_id: Some(id), .. })) if id == reported),
        "{chunks:?}"
    );
}

#[tokio::test]
async fn a_resumed_or_unassigned_claude_run_passes_no_session_id() {
    let dir = Scratch::new("claude-no-session-id");
    let bin = session_id_cli(&dir.0, false);
    let claude = claude_with(bin.clone(), ProcessLimits::default());
    let chunks: Vec<_> = claude.run(request("hi", Some("11111111-2222-4333-8444-555555555555"), None)).collect().await;
    assert!(matches!(chunks.last(), Some(Ok(Chunk::Completed { .. }))), "{chunks:?}");
    let args = std::fs::read_to_string(dir.0.join("args")).unwrap();
    assert!(!args.contains("--session-id") && args.contains("--resume"), "{args}");

    let claude = Claude::new(ClaudeConfig { assign_session_id: false, ..claude.config().clone() });
    let chunks: Vec<_> = claude.run(request("hi", None, None)).collect().await;
    let args = std::fs::read_to_string(dir.0.join("args")).unwrap();
    assert!(!args.contains("--session-id") && !args.contains("--resume"), "{args}");
    assert_eq!(
        chunks.first(),
        Some(&Ok(Chunk::SessionStarted { id: "11111111-2222-4333-8444-555555555555".into() })),
        "only the init's ID: {chunks:?}"
    );
}

#[tokio::test]
async fn claude_stale_resume_from_stderr_only_output_of_the_older_cli() {
    let dir = Scratch::new("claude-stale");
    let bin =
        script(&dir.0, "claude", "cat > /dev/null; echo 'No conversation found with session ID: 0000' >&2; exit 1");
    let claude = claude_with(bin, ProcessLimits::default());
    let chunks: Vec<_> = claude.run(request("hi", Some("0000"), None)).collect().await;
    assert!(
        matches!(&chunks[..], [Err(AssistantError::StaleSession { session_id, .. })] if session_id == "0000"),
        "{chunks:?}"
    );
}

#[tokio::test]
async fn a_missing_binary_is_a_readable_error() {
    let claude = claude_with(PathBuf::from("/nonexistent/claude"), ProcessLimits::default());
    let chunks: Vec<_> = claude.run(request("hi", None, None)).collect().await;
    assert!(
        matches!(&chunks[..], [Err(AssistantError::Exited { code: None, stderr })] if stderr.contains("could not start")),
        "{chunks:?}"
    );
}

/// A fake CLI that prints init, starts a grandchild that ignores SIGTERM, and hangs.
fn hanging_cli(dir: &Path) -> PathBuf {
    script(
        dir,
        "claude",
        &format!(
            "cat > /dev/null\n\
             echo '{{\"type\":\"system\",\"subtype\":\"init\",\"session_id\":\"s-1\"}}'\n\
             (trap '' TERM; sleep 300) &\n\
             echo \"$$ $!\" > '{d}/pids'\n\
             sleep 300",
            d = dir.display()
        ),
    )
}

#[tokio::test]
async fn cancel_kills_the_whole_process_group() {
    let dir = Scratch::new("claude-cancel");
    let limits = ProcessLimits { kill_grace: Duration::from_millis(300), ..ProcessLimits::default() };
    let claude = claude_with(hanging_cli(&dir.0), limits);
    // Resuming s-1: the first chunk comes from the CLI's init, so the CLI runs.
    let req = request("hi", Some("s-1"), None);
    let cancel = req.cancel.clone();
    let mut stream = claude.run(req);
    let first = stream.next().await;
    assert!(matches!(first, Some(Ok(Chunk::SessionStarted { ref id })) if id == "s-1"), "{first:?}");
    wait_for_file(&dir.0.join("pids")).await;
    let pids = read_pids(&dir.0.join("pids"));
    assert_eq!(pids.len(), 2);
    assert!(pids.iter().all(|p| pid_alive(*p)));
    cancel.cancel();
    let next = stream.next().await;
    assert!(matches!(next, Some(Err(AssistantError::Cancelled))), "{next:?}");
    assert!(stream.next().await.is_none());
    let alive = wait_dead(pids).await;
    assert!(alive.is_empty(), "processes {alive:?} survived the cancel");
}

/// Claude Code 2.1.329 runs each Bash tool in a process group of its own (observed in
/// the end-to-end tests). A fake CLI that does the same (`setsid`) and does not exit on
/// SIGTERM: its tool is outside the CLI's process group, yet must not survive a cancel.
#[tokio::test]
async fn cancel_kills_tools_that_run_in_a_process_group_of_their_own() {
    let dir = Scratch::new("claude-cancel-own-group");
    let bin = script(
        &dir.0,
        "claude",
        &format!(
            "cat > /dev/null\n\
             trap '' TERM\n\
             echo '{{\"type\":\"system\",\"subtype\":\"init\",\"session_id\":\"s-1\"}}'\n\
             setsid sleep 300 &\n\
             echo \"$$ $!\" > '{d}/pids'\n\
             while :; do sleep 1; done",
            d = dir.0.display()
        ),
    );
    let limits = ProcessLimits { kill_grace: Duration::from_millis(300), ..ProcessLimits::default() };
    let claude = claude_with(bin, limits);
    let req = request("hi", Some("s-1"), None);
    let cancel = req.cancel.clone();
    let mut stream = claude.run(req);
    assert!(matches!(stream.next().await, Some(Ok(Chunk::SessionStarted { .. }))));
    wait_for_file(&dir.0.join("pids")).await;
    let pids = read_pids(&dir.0.join("pids"));
    assert_eq!(pids.len(), 2);
    let group = |pid: i32| {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        stat.rsplit(')').next().and_then(|r| r.split_whitespace().nth(2)).unwrap_or_default().to_owned()
    };
    for _ in 0..100 {
        if group(pids[0]) != group(pids[1]) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_ne!(group(pids[0]), group(pids[1]), "the tool runs in a process group of its own");
    cancel.cancel();
    assert!(matches!(stream.next().await, Some(Err(AssistantError::Cancelled))));
    let alive = wait_dead(pids).await;
    assert!(alive.is_empty(), "processes {alive:?} survived the cancel");
}

#[tokio::test]
async fn idle_timeout_stops_a_silent_cli() {
    let dir = Scratch::new("claude-idle");
    let limits = ProcessLimits {
        idle_timeout: Duration::from_millis(500),
        kill_grace: Duration::from_millis(200),
        ..ProcessLimits::default()
    };
    let claude = claude_with(hanging_cli(&dir.0), limits);
    let chunks: Vec<_> = claude.run(request("hi", None, None)).collect().await;
    assert!(
        matches!(chunks.last(), Some(Err(AssistantError::Timeout(m))) if m.contains("printed nothing")),
        "{chunks:?}"
    );
    let alive = wait_dead(read_pids(&dir.0.join("pids"))).await;
    assert!(alive.is_empty(), "processes {alive:?} survived the timeout");
}

#[tokio::test]
async fn dropping_the_stream_kills_the_process_group() {
    let dir = Scratch::new("claude-drop");
    let limits = ProcessLimits { kill_grace: Duration::from_millis(200), ..ProcessLimits::default() };
    let claude = claude_with(hanging_cli(&dir.0), limits);
    let mut stream = claude.run(request("hi", None, None));
    assert!(matches!(stream.next().await, Some(Ok(Chunk::SessionStarted { .. }))));
    wait_for_file(&dir.0.join("pids")).await;
    let pids = read_pids(&dir.0.join("pids"));
    drop(stream);
    let alive = wait_dead(pids).await;
    assert!(alive.is_empty(), "processes {alive:?} survived the drop");
}

/// A tool that leaves the CLI's session *and* its parent (a double fork: the
/// intermediate shell exits at once, so the tool's parent link to the CLI is gone) is
/// invisible to the process-group and parent-link kills; it still carries the run's
/// marker, and ending the run kills it.
#[tokio::test]
async fn ending_a_run_kills_a_detached_orphan_tool_found_by_its_run_marker() {
    let dir = Scratch::new("claude-orphan-tool");
    let fixture = fixtures_dir().join("claude-resume-ok.jsonl");
    let bin = script(
        &dir.0,
        "claude",
        &format!(
            "cat > /dev/null\n\
             setsid sh -c 'sleep 300 & echo $! > \"{d}/pids\"' &\n\
             wait\n\
             cat '{f}'",
            d = dir.0.display(),
            f = fixture.display()
        ),
    );
    let claude = claude_with(bin, ProcessLimits::default());
    let req = request("hi", Some("d5f45b2a-004a-48c7-ab76-1d9863355e6e"), None);
    let run_id = req.run_id;
    let chunks: Vec<_> = claude.run(req).collect().await;
    assert!(matches!(chunks.last(), Some(Ok(Chunk::Completed { .. }))), "{chunks:?}");
    wait_for_file(&dir.0.join("pids")).await;
    let pids = read_pids(&dir.0.join("pids"));
    assert_eq!(pids.len(), 1);
    assert!(pid_alive(pids[0]), "the orphan tool outlived the CLI's normal exit");
    let environ = std::fs::read(format!("/proc/{}/environ", pids[0])).unwrap_or_default();
    let marker = format!("{}={run_id}", parley_assistant::run_marker::RUN_ID_ENV);
    assert!(environ.split(|b| *b == 0).any(|e| e == marker.as_bytes()), "the tool carries {marker}");

    let killed = parley_assistant::run_marker::end_run(run_id, Duration::from_secs(5)).await;
    assert_eq!(killed, 1);
    assert!(wait_dead(pids).await.is_empty(), "the orphan tool survived the end of its run");
    assert_eq!(parley_assistant::run_marker::end_run(run_id, Duration::from_secs(5)).await, 0, "ended once");
}

/// After a crash, what the dead Parley process left behind is found by its owner
/// marker: processes of a live owner are kept, those of a dead one are killed.
#[tokio::test]
async fn orphans_of_a_dead_parley_are_killed_and_a_live_ones_kept() {
    use parley_assistant::run_marker::{OWNER_ENV, RUN_ID_ENV, kill_orphans, owner};
    let (pid, start) = owner().split_once(':').expect("PID:START");
    // This PID started a tick later: another, dead, process.
    let dead = format!("{pid}:{}", start.parse::<u64>().expect("ticks") + 1);
    let spawn = |owner: &str| {
        std::process::Command::new("sleep")
            .arg("300")
            .env(OWNER_ENV, owner)
            .env(RUN_ID_ENV, uuid::Uuid::new_v4().to_string())
            .spawn()
            .expect("sleep")
    };
    let mut orphan = spawn(&dead);
    let mut kept = spawn(owner());
    let orphan_pid = i32::try_from(orphan.id()).expect("pid");
    let kept_pid = i32::try_from(kept.id()).expect("pid");

    assert!(kill_orphans(Duration::from_secs(5)).await >= 1);
    let _ = orphan.wait();
    assert!(!pid_alive(orphan_pid), "the dead owner's process was killed");
    assert!(pid_alive(kept_pid), "a live owner's process is left alone");
    let _ = kept.kill();
    let _ = kept.wait();
}

/// A warm process's run outlives the turns it serves: ending a turn kills the tools the
/// warm run started but spares the CLI while it is kept; once it is no longer kept, the
/// end of the turn it served kills it too.
#[tokio::test]
async fn ending_a_turn_spares_its_kept_warm_process_and_kills_its_tools() {
    use parley_assistant::run_marker::{
        RUN_ID_ENV, end_run, keep_warm, release_warm, serve_with_warm, warm_turn_used_tools,
    };
    let warm_run = uuid::Uuid::new_v4();
    let spawn =
        || std::process::Command::new("sleep").arg("300").env(RUN_ID_ENV, warm_run.to_string()).spawn().expect("sleep");
    let (mut cli, mut tool) = (spawn(), spawn());
    let cli_pid = i32::try_from(cli.id()).expect("pid");
    let tool_pid = i32::try_from(tool.id()).expect("pid");

    // A turn without a tool call started nothing: its end scans nothing.
    let quiet = uuid::Uuid::new_v4();
    serve_with_warm(quiet, warm_run);
    keep_warm(warm_run, cli_pid, None);
    assert_eq!(end_run(quiet, Duration::from_secs(5)).await, 0, "no tool call, no scan");
    assert!(pid_alive(cli_pid) && pid_alive(tool_pid));

    let turn = uuid::Uuid::new_v4();
    serve_with_warm(turn, warm_run);
    warm_turn_used_tools(turn);
    assert_eq!(end_run(turn, Duration::from_secs(5)).await, 1, "the turn's tool, not the kept CLI");
    let _ = tool.wait();
    assert!(!pid_alive(tool_pid), "the tool of the warm run was killed at the end of the turn");
    assert!(pid_alive(cli_pid), "the kept warm CLI lives on");

    let next = uuid::Uuid::new_v4();
    serve_with_warm(next, warm_run);
    release_warm(warm_run);
    assert_eq!(end_run(next, Duration::from_secs(5)).await, 1, "the CLI no longer kept");
    let _ = cli.wait();
    assert!(!pid_alive(cli_pid), "a warm CLI that is not kept dies with the turn it served");
}

/// A kept warm process whose launcher started the real CLI under it (the npm `codex`):
/// the run's processes that started before the CLI was ready are its own and outlive
/// the turn; a tool started later does not.
#[tokio::test]
async fn ending_a_turn_spares_what_the_warm_process_started_before_it_was_ready() {
    use parley_assistant::run_marker::{
        RUN_ID_ENV, end_run, keep_warm, now_ticks, serve_with_warm, warm_turn_used_tools,
    };
    let warm_run = uuid::Uuid::new_v4();
    let spawn =
        || std::process::Command::new("sleep").arg("300").env(RUN_ID_ENV, warm_run.to_string()).spawn().expect("sleep");
    let (launcher, cli) = (spawn(), spawn());
    tokio::time::sleep(Duration::from_millis(50)).await;
    let ready = now_ticks().expect("/proc/uptime");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut tool = spawn();
    let pid = |c: &std::process::Child| i32::try_from(c.id()).expect("pid");
    let (launcher_pid, cli_pid, tool_pid) = (pid(&launcher), pid(&cli), pid(&tool));

    let turn = uuid::Uuid::new_v4();
    serve_with_warm(turn, warm_run);
    warm_turn_used_tools(turn);
    keep_warm(warm_run, launcher_pid, Some(ready));
    assert_eq!(end_run(turn, Duration::from_secs(5)).await, 1, "the tool alone");
    let _ = tool.wait();
    assert!(!pid_alive(tool_pid), "the tool started after the CLI was ready was killed");
    assert!(pid_alive(launcher_pid) && pid_alive(cli_pid), "the launcher and the CLI it started live on");
    for mut c in [launcher, cli] {
        let _ = c.kill();
        let _ = c.wait();
    }
}
