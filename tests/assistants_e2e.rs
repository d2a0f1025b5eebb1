//! End-to-end tests of the real assistant adapters: the real `parley serve` binary, a real
//! PostgreSQL (a fresh database per test, [`TestDb`]), and
//! - the real `claude` CLI (pinned, installed into `.tools/` by
//!   `scripts/install-assistant-clis`) talking to the local mock Anthropic API through
//!   `ANTHROPIC_BASE_URL`, as the fixtures were captured (`ANTHROPIC_API_KEY=sk-test`,
//!   `CLAUDE_CODE_MAX_RETRIES=0`);
//! - the real `codex` CLI with a `$CODEX_HOME/config.toml` whose model provider is the
//!   local mock OpenAI Responses API (`wire_api = "responses"`, no retries), as the codex
//!   fixtures were captured;
//! - the `openai` adapter against the same mock Responses API.
//!
//! Parley runs with a cleared environment (only what each test sets), so a developer's
//! own API keys or CLI configuration never reach the CLIs under test. Each test has its
//! own scratch directory (HOME, CLAUDE_CONFIG_DIR / CODEX_HOME, conversation cwds and
//! Parley's log), kept when the test fails.
//!
//! When `.tools/bin/claude` or `.tools/bin/codex` is missing, the tests that need it
//! print SKIPPED and why, and pass without running — except under `CI=true`, where they
//! fail.

#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use parley_test_support::TestDb;
use parley_test_support::mock_anthropic::{HELLO, MockAnthropic, last_user_text};
use parley_test_support::mock_openai::{self, MockOpenAi};
use parley_test_support::sse;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

fn tools_bin(name: &str) -> Option<PathBuf> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/bin").join(name);
    path.exists().then_some(path)
}

/// True (after printing SKIPPED) when `.tools/bin/NAME` is missing; under `CI=true` a
/// missing CLI fails the test instead.
fn skip(name: &str) -> bool {
    tools_bin(name).is_none()
        && parley_test_support::skip_missing(&format!(
            ".tools/bin/{name} is missing; run scripts/install-assistant-clis to run the {name} end-to-end tests"
        ))
}

/// A scratch directory (HOME, CLI config, conversation cwds, Parley's log), removed at
/// drop unless the test failed.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("parley-e2e-{tag}-{}", uuid::Uuid::new_v4().simple()));
        for sub in ["home", "claude-config", "codex-home"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        Self(dir)
    }

    fn path(&self, sub: &str) -> PathBuf {
        self.0.join(sub)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("kept the scratch directory of the failed test (parley.log inside): {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// The environment of a Parley that runs `claude` against the mock Anthropic API.
fn claude_env(scratch: &Scratch, anthropic: &MockAnthropic) -> Vec<(&'static str, String)> {
    vec![
        ("PARLEY_ASSISTANT", "claude".into()),
        ("PARLEY_CLAUDE_BIN", tools_bin("claude").unwrap().display().to_string()),
        ("PARLEY_CLAUDE_CONFIG_DIR", scratch.path("claude-config").display().to_string()),
        ("ANTHROPIC_BASE_URL", anthropic.url()),
        ("ANTHROPIC_API_KEY", "sk-test".into()),
        ("CLAUDE_CODE_MAX_RETRIES", "0".into()),
        ("DISABLE_AUTOUPDATER", "1".into()),
        ("DISABLE_TELEMETRY", "1".into()),
        ("DISABLE_ERROR_REPORTING", "1".into()),
    ]
}

/// The environment of a Parley that runs `codex` against the mock Responses API: writes
/// `$CODEX_HOME/config.toml` with a `mock` model provider (as the fixtures were captured).
fn codex_env(scratch: &Scratch, openai: &MockOpenAi) -> Vec<(&'static str, String)> {
    let home = scratch.path("codex-home");
    let config = format!(
        r#"model = "gpt-5.5"
model_provider = "mock"

[model_providers.mock]
name = "mock"
base_url = "{}/v1"
env_key = "OPENAI_API_KEY"
wire_api = "responses"
request_max_retries = 0
stream_max_retries = 0
"#,
        openai.url()
    );
    std::fs::write(home.join("config.toml"), config).unwrap();
    vec![
        ("PARLEY_ASSISTANT", "codex".into()),
        ("PARLEY_CODEX_BIN", tools_bin("codex").unwrap().display().to_string()),
        ("PARLEY_CODEX_HOME", home.display().to_string()),
        ("OPENAI_API_KEY", "sk-test".into()),
    ]
}

/// The environment of a Parley that uses the `openai` adapter against the mock.
fn openai_env(openai: &MockOpenAi) -> Vec<(&'static str, String)> {
    vec![
        ("PARLEY_ASSISTANT", "openai".into()),
        ("PARLEY_OPENAI_BASE_URL", format!("{}/v1", openai.url())),
        ("OPENAI_API_KEY", "sk-test".into()),
    ]
}

/// A running `parley serve`, killed on drop.
struct Parley {
    child: Child,
    base: String,
    /// The metrics listener's URL, when `PARLEY_METRICS_BIND` was set.
    metrics: Option<String>,
    http: reqwest::Client,
}

impl Parley {
    /// Starts `parley serve` on a free port with a cleared environment plus `env`; its
    /// stderr goes to `parley.log` in the scratch directory.
    async fn start(scratch: &Scratch, db: &TestDb, env: &[(&str, String)]) -> Self {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(scratch.path("parley.log")).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_parley"))
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", scratch.path("home"))
            .env("LANG", "C.UTF-8")
            .env("DATABASE_URL", db.url())
            .env("PARLEY_BIND", "127.0.0.1:0")
            .env("PARLEY_AUTH", "off")
            // Conversations name their directories relative to the scratch directory.
            .env("PARLEY_WORKSPACE_ROOT", scratch.path(""))
            .env("PARLEY_WORKERS", "2")
            .env("PARLEY_SHUTDOWN_GRACE_SECS", "1")
            // A hung CLI fails the test in seconds, not after the production defaults.
            .env("PARLEY_ASSISTANT_IDLE_TIMEOUT_SECS", "30")
            .env("PARLEY_ASSISTANT_TIMEOUT_SECS", "90")
            .env("RUST_LOG", "info")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let log = scratch.path("parley.log");
        let mut metrics = None;
        let base = tokio::time::timeout(Duration::from_secs(60), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(rest) = line.strip_prefix("Parley serves metrics on ") {
                    metrics = rest.split_whitespace().next().map(str::to_owned);
                }
                if let Some(rest) = line.strip_prefix("Parley is listening on ") {
                    return rest.split_whitespace().next().unwrap_or_default().to_owned();
                }
            }
            panic!("parley exited; see {}", log.display());
        })
        .await
        .expect("parley did not start within 60 s");
        // Keep draining stdout so that a later print never meets a closed pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self { child, base, metrics, http: reqwest::Client::new() }
    }

    async fn stop(mut self) {
        let _ = self.child.kill().await;
    }

    /// One series (`name{labels}`) of a scrape of the metrics listener: its value, and
    /// the whole scrape (for assertion messages).
    async fn metric(&self, series: &str) -> (Option<f64>, String) {
        let url = self.metrics.clone().expect("the metrics listener (PARLEY_METRICS_BIND)");
        let scraped = self.http.get(url).send().await.unwrap().text().await.unwrap();
        let value = scraped
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse::<f64>().ok());
        (value, scraped)
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        let resp = self.http.post(format!("{}/api{path}", self.base)).json(&body).send().await.unwrap();
        let status = resp.status();
        let answer: Value = resp.json().await.unwrap_or_default();
        assert!(status.is_success(), "POST {path}: {status} {answer}");
        answer
    }

    async fn get(&self, path: &str) -> Value {
        let resp = self.http.get(format!("{}/api{path}", self.base)).send().await.unwrap();
        assert!(resp.status().is_success(), "GET {path}: {}", resp.status());
        resp.json().await.unwrap()
    }

    /// Creates a conversation with `assistant` working in `cwd`, a directory directly in
    /// the scratch directory (the workspace root); returns its id.
    async fn conversation(&self, assistant: &str, cwd: &Path) -> String {
        let name = cwd.file_name().and_then(|n| n.to_str()).expect("a directory in the scratch directory");
        let conversation = self.post("/conversations", json!({ "assistant": assistant, "cwd": name })).await;
        conversation["conversation_id"].as_str().unwrap().to_owned()
    }

    /// Posts a message; returns its turn id.
    async fn send(&self, conversation: &str, text: &str) -> String {
        let posted = self.post(&format!("/conversations/{conversation}/messages"), json!({ "text": text })).await;
        posted["turn_id"].as_str().unwrap_or_else(|| panic!("no turn for {text:?}: {posted}")).to_owned()
    }

    /// Waits for a turn to end; returns it.
    async fn wait_turn(&self, turn_id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let turn = self.get(&format!("/turns/{turn_id}")).await;
            if !matches!(turn["status"].as_str(), Some("queued" | "running")) {
                return turn;
            }
            assert!(Instant::now() < deadline, "turn {turn_id} did not finish: {turn}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Posts a message and waits for its turn to end; returns the turn.
    async fn turn(&self, conversation: &str, text: &str) -> Value {
        let turn_id = self.send(conversation, text).await;
        self.wait_turn(&turn_id).await
    }

    async fn sessions(&self, conversation: &str) -> Vec<Value> {
        self.get(&format!("/sessions?status=all&conversation_id={conversation}")).await["sessions"]
            .as_array()
            .cloned()
            .unwrap()
    }

    async fn active_session(&self, conversation: &str) -> Value {
        self.sessions(conversation).await.into_iter().find(|s| s["active"] == true).expect("an active session")
    }

    async fn messages(&self, conversation: &str) -> Vec<Value> {
        self.get(&format!("/conversations/{conversation}/messages?limit=500")).await["messages"]
            .as_array()
            .cloned()
            .unwrap()
    }

    async fn last_assistant_message(&self, conversation: &str) -> Value {
        self.messages(conversation).await.into_iter().rev().find(|m| m["role"] == "assistant").unwrap()
    }
}

/// Every text of a Messages API request (all messages), to look for carried history.
fn all_text(body: &Value) -> String {
    body["messages"]
        .as_array()
        .map(|m| m.iter().map(parley_test_support::mock_anthropic::message_text).collect::<Vec<_>>().join("\n"))
        .unwrap_or_default()
}

/// Every text of a Responses API request's `input` (a string, or message items).
fn input_text(body: &Value) -> String {
    match &body["input"] {
        Value::String(s) => s.clone(),
        Value::Array(items) => items
            .iter()
            .flat_map(|i| i["content"].as_array().cloned().unwrap_or_default())
            .filter_map(|p| p["text"].as_str().map(str::to_owned))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// Live processes whose environment holds `entry` (`NAME=value`) or whose working
/// directory is under `cwd`, as `pid: command line`. Zombies (already dead, not yet
/// reaped) show neither and are not listed.
fn processes_of(entry: &str, cwd: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else { return found };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let environ = std::fs::read(e.path().join("environ")).unwrap_or_default();
        let in_env = environ.split(|b| *b == 0).any(|v| v == entry.as_bytes());
        let in_cwd = std::fs::read_link(e.path().join("cwd")).is_ok_and(|c| c.starts_with(cwd));
        if in_env || in_cwd {
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            let pgid = stat.rsplit(')').next().and_then(|r| r.split_whitespace().nth(2)).unwrap_or("?").to_owned();
            found
                .push(format!("{pid} (group {pgid}): {}", String::from_utf8_lossy(&cmdline).replace('\0', " ").trim()));
        }
    }
    found
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[tokio::test]
async fn claude_resumes_and_recovers_a_lost_transcript_after_a_restart() {
    if skip("claude") {
        return;
    }
    let scratch = Scratch::new("claude");
    let anthropic = MockAnthropic::start().await;
    let db = TestDb::new().await;
    let env = claude_env(&scratch, &anthropic);
    let parley = Parley::start(&scratch, &db, &env).await;
    let id = parley.conversation("claude", &scratch.path("work")).await;

    // First message: a fresh session whose ID is the one system/init reported.
    let turn = parley.turn(&id, "first question alpha").await;
    assert_eq!(turn["status"], "completed", "{turn}; log in {}", scratch.0.display());
    assert_eq!(parley.last_assistant_message(&id).await["content"], HELLO);
    let session = parley.active_session(&id).await;
    let claude_session = session["assistant_session_id"].as_str().expect("a stored assistant session ID").to_owned();
    let transcripts = scratch.path("claude-config/projects");
    let found = walk(&transcripts).into_iter().any(|p| p.ends_with(format!("{claude_session}.jsonl")));
    assert!(found, "the stored ID names the CLI's transcript");

    // Second message: resumed — the API request carries the first exchange.
    let turn = parley.turn(&id, "second question beta").await;
    assert_eq!(turn["status"], "completed", "{turn}");
    assert_eq!(parley.active_session(&id).await["assistant_session_id"], claude_session.as_str());
    let requests = anthropic.message_requests_for("second question beta");
    assert!(requests.iter().any(|b| all_text(b).contains("first question alpha")), "resumed context: {requests:?}");

    // Container restart: the transcripts are gone, and so is Parley's copy (a restore
    // from the copy is checked by `claude_keeps_one_session_across_alternating_replicas_and_restarts`).
    parley.stop().await;
    std::fs::remove_dir_all(&transcripts).unwrap();
    let kept = db.pool.get().await.unwrap().execute("delete from transcript", &[]).await.unwrap();
    assert_eq!(kept, 1, "Parley kept the transcript");
    let parley = Parley::start(&scratch, &db, &env).await;
    let turn = parley.turn(&id, "third question gamma").await;
    assert_eq!(turn["status"], "completed", "answered in the same turn: {turn}");
    assert!(turn["error"].is_null(), "{turn}");
    assert_eq!(parley.last_assistant_message(&id).await["content"], HELLO);
    let sessions = parley.sessions(&id).await;
    assert!(
        sessions.iter().any(|s| s["transition_reason"] == "stale-session" && s["active"] == true),
        "the session chain shows the stale-session recovery: {sessions:?}"
    );
    let active = parley.active_session(&id).await;
    assert_ne!(active["assistant_session_id"], claude_session.as_str());
    assert!(active["assistant_session_id"].is_string());
    // The fresh session's request carries the earlier messages, rebuilt from history.
    let requests = anthropic.message_requests_for("third question gamma");
    let rebuilt = requests.iter().find(|b| {
        let text = last_user_text(b);
        text.contains("first question alpha") && text.contains("second question beta") && text.contains(HELLO)
    });
    assert!(rebuilt.is_some(), "history-rebuilt prompt: {requests:?}");
    parley.stop().await;
}

#[tokio::test]
async fn claude_api_errors_fail_the_turn_and_keep_the_session() {
    if skip("claude") {
        return;
    }
    let scratch = Scratch::new("claude-529");
    let anthropic = MockAnthropic::start().await;
    let db = TestDb::new().await;
    let parley = Parley::start(&scratch, &db, &claude_env(&scratch, &anthropic)).await;
    let id = parley.conversation("claude", &scratch.path("w")).await;
    assert_eq!(parley.turn(&id, "hello there").await["status"], "completed");
    let claude_session = parley.active_session(&id).await["assistant_session_id"].clone();
    assert!(claude_session.is_string());

    let turn = parley.turn(&id, "SCN_HTTP529 please").await;
    assert_eq!(turn["status"], "failed", "{turn}");
    let error = turn["error"].as_str().unwrap_or_default();
    assert!(error.contains("529") && error.contains("Overloaded"), "a readable error: {error}");
    let session = parley.active_session(&id).await;
    assert_eq!(session["assistant_session_id"], claude_session, "an API error keeps the session");
    assert!(session["last_error"].as_str().is_some_and(|e| e.contains("529")), "{session}");

    assert_eq!(parley.turn(&id, "and now?").await["status"], "completed");
    let session = parley.active_session(&id).await;
    assert!(session["last_error"].is_null(), "a success clears last_error: {session}");
    assert_eq!(session["assistant_session_id"], claude_session);
    parley.stop().await;
}

#[tokio::test]
async fn claude_cancel_stops_the_cli_and_keeps_the_partial_reply() {
    if skip("claude") {
        return;
    }
    let scratch = Scratch::new("claude-cancel");
    let anthropic = MockAnthropic::start().await;
    let db = TestDb::new().await;
    let parley = Parley::start(&scratch, &db, &claude_env(&scratch, &anthropic)).await;
    let cwd = scratch.path("work");
    let id = parley.conversation("claude", &cwd).await;

    let turn_id = parley.send(&id, "SCN_SLOW tell me a long story").await;
    let mut events = sse::connect(&format!("{}/api/conversations/{id}/events", parley.base), None).await;
    let mut texts = 0;
    sse::read_until(&mut events, Duration::from_secs(60), |m| {
        texts += usize::from(m.event == "text");
        texts >= 3
    })
    .await;

    // The CLI runs now: it (and anything it spawned) carries the test's CLAUDE_CONFIG_DIR
    // in its environment, or works in the conversation's cwd.
    let marker = format!("CLAUDE_CONFIG_DIR={}", scratch.path("claude-config").display());
    let running = processes_of(&marker, &cwd);
    assert!(!running.is_empty(), "the claude CLI is found while it runs");
    // Parley assigned the fresh session's ID (`--session-id`) and stored it mid-turn.
    let assigned = running
        .iter()
        .find_map(|p| p.split(" --session-id ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("--session-id in the CLI's command line: {running:?}"))
        .to_owned();
    assert_eq!(parley.active_session(&id).await["assistant_session_id"], assigned.as_str());
    cancel_and_expect_no_processes_left(&parley, &id, &turn_id, &marker, &cwd, &running).await;

    let partial = parley.last_assistant_message(&id).await;
    assert_eq!(partial["turn_id"], turn_id.as_str(), "the partial reply is stored: {partial}");
    assert_eq!(partial["metadata"]["incomplete"], true, "{partial}");
    let content = partial["content"].as_str().unwrap();
    let whole = "This is a slow reply that streams one word at a time so that a test can cancel it midway. ".repeat(6);
    assert!(content.len() >= "This is a".len() && whole.starts_with(content), "{content:?}");
    assert!(content.len() < whole.trim_end().len(), "cancelled midway, not after the whole reply: {content:?}");

    // The conversation goes on after the cancel…
    let turn = parley.turn(&id, "are you still there?").await;
    assert_eq!(turn["status"], "completed", "{turn}");
    assert_eq!(parley.last_assistant_message(&id).await["content"], HELLO);
    // …in the same session, resumed: the cancelled exchange is in the CLI's context.
    let sessions = parley.sessions(&id).await;
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    assert_eq!(sessions[0]["assistant_session_id"], assigned.as_str());
    let requests = anthropic.message_requests_for("are you still there?");
    assert!(requests.iter().any(|b| all_text(b).contains("SCN_SLOW tell me a long story")), "{requests:?}");
    parley.stop().await;
}

#[tokio::test]
async fn claude_cancel_kills_the_tools_the_cli_started() {
    if skip("claude") {
        return;
    }
    let scratch = Scratch::new("claude-cancel-tool");
    let anthropic = MockAnthropic::start().await;
    let db = TestDb::new().await;
    let mut env = claude_env(&scratch, &anthropic);
    env.push(("PARLEY_CLAUDE_ALLOWED_TOOLS", "Bash(tail *)".into()));
    let parley = Parley::start(&scratch, &db, &env).await;
    let cwd = scratch.path("work");
    let id = parley.conversation("claude", &cwd).await;

    // The mock makes the CLI run `tail -F hang.txt` (which never ends) through its Bash tool.
    let turn_id = parley.send(&id, "SCN_HANG wait for me").await;
    let marker = format!("CLAUDE_CONFIG_DIR={}", scratch.path("claude-config").display());
    let deadline = Instant::now() + Duration::from_secs(60);
    let running = loop {
        let running = processes_of(&marker, &cwd);
        if running.iter().any(|p| p.contains("tail -F hang.txt")) {
            break running;
        }
        let turn = parley.get(&format!("/turns/{turn_id}")).await;
        let waiting = matches!(turn["status"].as_str(), Some("queued" | "running"));
        if !waiting || Instant::now() >= deadline {
            panic!("the tool never ran: {turn} {running:?} {:?}", parley.messages(&id).await);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    cancel_and_expect_no_processes_left(&parley, &id, &turn_id, &marker, &cwd, &running).await;

    let partial = parley.last_assistant_message(&id).await;
    assert_eq!(partial["turn_id"], turn_id.as_str(), "the partial reply is stored: {partial}");
    assert_eq!(partial["metadata"]["incomplete"], true, "{partial}");
    assert!(partial["content"].as_str().unwrap().contains("I'll run a command to check."), "{partial}");
    parley.stop().await;
}

/// Sends `/cancel`, expects the turn `cancelled` and, within 10 s, no process left that
/// carries `marker` in its environment or works under `cwd`.
async fn cancel_and_expect_no_processes_left(
    parley: &Parley,
    conversation: &str,
    turn_id: &str,
    marker: &str,
    cwd: &Path,
    running: &[String],
) {
    let cancelled = parley.post(&format!("/conversations/{conversation}/messages"), json!({ "text": "/cancel" })).await;
    assert_eq!(cancelled["ok"], true, "{cancelled}");
    let turn = parley.wait_turn(turn_id).await;
    assert_eq!(turn["status"], "cancelled", "{turn}");
    eprintln!("processes of the turn before /cancel: {running:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = processes_of(marker, cwd);
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "processes left after /cancel: {left:?} (they ran as {running:?})");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One look at the processes of a test's Claude runs: the CLIs Parley started
/// (`claude -p … stream-json` whose parent is not such a process: claude-code 2.1.329
/// starts helper processes with its own command line, some in a session of their own)
/// and the `tail -F hang.txt` tools they started, as `pid (group pgid): command line`.
#[derive(Debug, Clone, Default)]
struct Snapshot {
    clis: Vec<String>,
    tools: Vec<String>,
}

fn snapshot(marker: &str, cwd: &Path) -> Snapshot {
    let mut shot = Snapshot::default();
    for p in processes_of(marker, cwd) {
        let command = p.split_once(": ").map_or("", |(_, c)| c);
        if command.contains("--output-format stream-json") && !parent_is_a_cli(pid_of(&p)) {
            shot.clis.push(p);
        } else if command.starts_with("tail -F hang.txt") {
            shot.tools.push(p);
        }
    }
    shot
}

/// Whether the parent of `pid` runs `claude -p … stream-json` too.
fn parent_is_a_cli(pid: u32) -> bool {
    parent_runs(pid, "--output-format stream-json")
}

/// Whether the command line of the parent of `pid` contains `needle`.
fn parent_runs(pid: u32, needle: &str) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let ppid = stat.rsplit(')').next().and_then(|r| r.split_whitespace().nth(1)).unwrap_or("0");
    cmdline_of(ppid.parse().unwrap_or(0)).contains(needle)
}

fn pid_of(process: &str) -> u32 {
    process.split_whitespace().next().and_then(|p| p.parse().ok()).unwrap_or(0)
}

fn alive(pids: &[u32]) -> Vec<u32> {
    pids.iter()
        .copied()
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .is_ok_and(|s| !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
        })
        .collect()
}

/// Samples the test's processes every 20 ms on a thread of its own until dropped; keeps
/// the largest numbers of CLIs and of tools seen at once, with the snapshot that had them.
struct Sampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<(Snapshot, Snapshot, usize)>>,
}

impl Sampler {
    fn start(marker: String, cwd: PathBuf) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = std::sync::Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let (mut most_clis, mut most_tools, mut samples) = (Snapshot::default(), Snapshot::default(), 0);
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let shot = snapshot(&marker, &cwd);
                if shot.clis.len() > most_clis.clis.len() {
                    most_clis = shot.clone();
                }
                if shot.tools.len() > most_tools.tools.len() {
                    most_tools = shot;
                }
                samples += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            (most_clis, most_tools, samples)
        });
        Self { stop, thread: Some(thread) }
    }

    /// Stops sampling; returns the snapshots with the most CLIs and the most tools at once,
    /// and how many samples were taken.
    fn finish(mut self) -> (Snapshot, Snapshot, usize) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.take().map(|t| t.join().unwrap()).unwrap_or_default()
    }
}

/// Waits until `done` holds, polling every 50 ms; fails with `what` after `limit`.
async fn until(limit: Duration, what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits up to `limit` for a snapshot that satisfies `done`; returns it.
async fn wait_for(marker: &str, cwd: &Path, limit: Duration, what: &str, done: impl Fn(&Snapshot) -> bool) -> Snapshot {
    let deadline = Instant::now() + limit;
    loop {
        let shot = snapshot(marker, cwd);
        if done(&shot) {
            return shot;
        }
        assert!(Instant::now() < deadline, "{what} within {limit:?}: {shot:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The pid of the watchdog `parley serve` started beside itself (`parley watchdog`).
fn watchdog_of(parley_pid: u32) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
        let ppid: u32 = stat.rsplit(')').next()?.split_whitespace().nth(1)?.parse().ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        let watchdog = String::from_utf8_lossy(&cmdline).contains("watchdog\0--owner");
        (ppid == parley_pid && watchdog).then_some(pid)
    })
}

/// How Parley dies in [`claude_survivors_of_a_killed_parley`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Crash {
    /// SIGKILL to Parley's process alone: its watchdog kills the tool at once.
    ParleyAlone,
    /// SIGKILL to Parley and then to its watchdog (an OOM kill of both): the tool lives
    /// until a Parley starts again on the host.
    ParleyAndWatchdog,
}

/// Parley is killed with SIGKILL while the Claude CLI runs a tool that never ends
/// (`tail -F`, which claude-code starts in a session of its own), then started again —
/// with the same worker id, or another one. The CLI dies with Parley (parent-death
/// signal); the tool dies within seconds — by Parley's watchdog, or, when that was
/// killed too, by the restarted Parley before the turn runs again. A sampler watching
/// every 20 ms proves that no two CLIs (nor two tools) of the conversation ever ran at
/// once. Deleting the conversation then kills the re-run's CLI and tool.
async fn claude_survivors_of_a_killed_parley(crash: Crash, restart_worker_id: &str) {
    let scratch = Scratch::new("claude-kill9");
    let anthropic = MockAnthropic::start().await;
    let db = TestDb::new().await;
    let mut env = claude_env(&scratch, &anthropic);
    env.push(("PARLEY_CLAUDE_ALLOWED_TOOLS", "Bash(tail *)".into()));
    env.push(("PARLEY_LEASE_SECS", "3".into()));
    env.push(("PARLEY_SWEEP_INTERVAL_SECS", "1".into()));
    let mut first_env = env.clone();
    first_env.push(("PARLEY_WORKER_ID", "e2e-first".into()));
    let parley = Parley::start(&scratch, &db, &first_env).await;
    let cwd = scratch.path("work");
    let id = parley.conversation("claude", &cwd).await;
    let marker = format!("CLAUDE_CONFIG_DIR={}", scratch.path("claude-config").display());
    let sampler = Sampler::start(marker.clone(), cwd.clone());

    let turn_id = parley.send(&id, "SCN_HANG wait for me").await;
    let before =
        wait_for(&marker, &cwd, Duration::from_secs(60), "the CLI runs its tool", |s| !s.tools.is_empty()).await;
    let old_clis: Vec<u32> = before.clis.iter().map(|p| pid_of(p)).collect();
    let old_tools: Vec<u32> = before.tools.iter().map(|p| pid_of(p)).collect();
    assert_eq!((old_clis.len(), old_tools.len()), (1, 1), "{before:?}");
    let parley_pid = parley.child.id().expect("pid");
    let watchdog = watchdog_of(parley_pid).expect("parley serve started its watchdog");

    let mut parley = parley;
    parley.child.kill().await.unwrap();
    let killed_at = Instant::now();
    assert!(alive(&[parley_pid]).is_empty(), "Parley is dead");
    if crash == Crash::ParleyAndWatchdog {
        let _ = std::process::Command::new("kill").args(["-KILL", &watchdog.to_string()]).status();
    }
    while !alive(&old_clis).is_empty() {
        assert!(killed_at.elapsed() < Duration::from_secs(3), "the CLI outlived Parley: {:?}", snapshot(&marker, &cwd));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("the CLI died {:?} after Parley", killed_at.elapsed());
    if crash == Crash::ParleyAlone {
        while !alive(&old_tools).is_empty() {
            assert!(killed_at.elapsed() < Duration::from_secs(5), "the watchdog left the tool: {old_tools:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        eprintln!("the watchdog killed the tool {:?} after Parley died", killed_at.elapsed());
        while !alive(&[watchdog]).is_empty() {
            assert!(killed_at.elapsed() < Duration::from_secs(15), "the watchdog did not exit");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    } else {
        // The tool runs in a session of its own: it outlives Parley until a Parley starts
        // on this host (here the restart; with tests in parallel, possibly another test's).
        tokio::time::sleep(Duration::from_millis(500)).await;
        eprintln!("tools of the killed run alive before the restart: {:?} of {old_tools:?}", alive(&old_tools));
    }

    let mut second_env = env.clone();
    second_env.push(("PARLEY_WORKER_ID", restart_worker_id.into()));
    let parley = Parley::start(&scratch, &db, &second_env).await;
    let restarted_at = Instant::now();
    while !alive(&old_tools).is_empty() {
        assert!(restarted_at.elapsed() < Duration::from_secs(5), "the old tool survived the restart: {old_tools:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("the old tool was gone {:?} after the restart", restarted_at.elapsed());

    // The turn runs again (resuming the session): a new CLI and a new tool, never beside
    // the old ones.
    let again = wait_for(&marker, &cwd, Duration::from_secs(60), "the re-run's tool", |s| !s.tools.is_empty()).await;
    assert!(again.clis.iter().all(|p| !old_clis.contains(&pid_of(p))), "{again:?}");
    let turn = parley.get(&format!("/turns/{turn_id}")).await;
    assert_eq!(turn["status"], "running", "{turn}");
    assert_eq!(turn["attempt"], 2, "{turn}");
    let resumed = again.clis.first().is_some_and(|c| c.contains("--resume"));
    assert!(resumed, "the re-run resumes the session the killed run started: {again:?}");

    // Deleting the conversation stops the re-run: its CLI and tool are killed.
    let resp = parley.http.delete(format!("{}/api/conversations/{id}", parley.base)).send().await.unwrap();
    assert_eq!(resp.status(), 204);
    wait_for(&marker, &cwd, Duration::from_secs(10), "no process left after the delete", |s| {
        s.clis.is_empty() && s.tools.is_empty()
    })
    .await;
    let (most_clis, most_tools, samples) = sampler.finish();
    eprintln!("{samples} samples; most CLIs at once: {most_clis:?}; most tools at once: {most_tools:?}");
    // Sampled every 20 ms while the test ran; a loaded machine samples less often, so
    // only ask for enough samples to have watched both runs.
    assert!(samples >= 20, "the sampler ran ({samples} samples)");
    assert_eq!(most_clis.clis.len(), 1, "two CLIs ran at once: {most_clis:?}");
    assert_eq!(most_tools.tools.len(), 1, "two tools ran at once: {most_tools:?}");
    let client = db.pool.get().await.unwrap();
    let rows: i64 = client
        .query_one("select count(*) from event where conversation_id = $1::text::uuid", &[&id])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 0, "the deleted conversation's events are gone");
    parley.stop().await;
}

#[tokio::test]
async fn claude_and_its_tool_do_not_outlive_a_parley_killed_alone() {
    if skip("claude") {
        return;
    }
    claude_survivors_of_a_killed_parley(Crash::ParleyAlone, "e2e-first").await;
}

#[tokio::test]
async fn claude_tool_left_by_a_killed_parley_and_watchdog_dies_at_a_restart_with_the_same_worker_id() {
    if skip("claude") {
        return;
    }
    claude_survivors_of_a_killed_parley(Crash::ParleyAndWatchdog, "e2e-first").await;
}

#[tokio::test]
async fn claude_tool_left_by_a_killed_parley_and_watchdog_dies_at_a_restart_with_another_worker_id() {
    if skip("claude") {
        return;
    }
    claude_survivors_of_a_killed_parley(Crash::ParleyAndWatchdog, "e2e-second").await;
}

#[tokio::test]
async fn codex_resumes_its_thread_and_recovers_a_deleted_rollout() {
    if skip("codex") {
        return;
    }
    codex_resumes_and_recovers(true).await;
}

#[tokio::test]
async fn codex_exec_without_warm_processes_resumes_its_thread_and_recovers_a_deleted_rollout() {
    if skip("codex") {
        return;
    }
    codex_resumes_and_recovers(false).await;
}

/// A thread resumed turn after turn, then lost with Parley's copy and recovered from
/// the history: through warm `codex app-server`s (`warm`), else `codex exec` per turn.
async fn codex_resumes_and_recovers(warm: bool) {
    let scratch = Scratch::new(if warm { "codex" } else { "codex-exec" });
    let openai = MockOpenAi::start().await;
    let db = TestDb::new().await;
    let mut env = codex_env(&scratch, &openai);
    if !warm {
        env.push(("PARLEY_CODEX_WARM_PROCESSES", "0".into()));
    }
    let parley = Parley::start(&scratch, &db, &env).await;
    let id = parley.conversation("codex", &scratch.path("work")).await;

    // First message: a new thread, stored as the one `thread.started` reported.
    let turn = parley.turn(&id, "first question alpha").await;
    assert_eq!(turn["status"], "completed", "{turn}; log in {}", scratch.0.display());
    assert_eq!(parley.last_assistant_message(&id).await["content"], HELLO);
    let thread =
        parley.active_session(&id).await["assistant_session_id"].as_str().expect("a stored thread id").to_owned();
    let sessions_dir = scratch.path("codex-home/sessions");
    let rollouts: Vec<PathBuf> = walk(&sessions_dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl") && p.to_string_lossy().contains(&thread))
        .collect();
    assert!(!rollouts.is_empty(), "the stored ID names codex's rollout in {}", sessions_dir.display());
    let live = codex_pids(&scratch, &scratch.path("work"));
    assert_eq!(live.len(), usize::from(warm), "a warm app-server after the turn only when warm: {live:?}");

    // Second message: the same thread (the warm `app-server` that loaded it, or `codex
    // exec resume <thread>`): the request carries the first exchange.
    let turn = parley.turn(&id, "second question beta").await;
    assert_eq!(turn["status"], "completed", "{turn}");
    assert_eq!(parley.active_session(&id).await["assistant_session_id"], thread.as_str());
    let requests = openai.response_requests_for("second question beta");
    assert_eq!(requests.len(), 1, "{requests:?}");
    let resumed = input_text(&requests[0]);
    assert!(resumed.contains("first question alpha") && resumed.contains(HELLO), "resumed context: {resumed}");

    // Restart with the rollouts gone, and Parley's copy too: answered fresh, with the
    // history, in the same turn.
    parley.stop().await;
    for p in walk(&sessions_dir).into_iter().filter(|p| p.extension().is_some_and(|e| e == "jsonl")) {
        std::fs::remove_file(p).unwrap();
    }
    let kept = db.pool.get().await.unwrap().execute("delete from transcript", &[]).await.unwrap();
    assert_eq!(kept, 1, "Parley kept the rollout");
    let parley = Parley::start(&scratch, &db, &env).await;
    let turn = parley.turn(&id, "third question gamma").await;
    assert_eq!(turn["status"], "completed", "answered in the same turn: {turn}");
    assert!(turn["error"].is_null(), "{turn}");
    assert_eq!(parley.last_assistant_message(&id).await["content"], HELLO);
    let sessions = parley.sessions(&id).await;
    assert!(
        sessions.iter().any(|s| s["transition_reason"] == "stale-session" && s["active"] == true),
        "the session chain shows the stale-session recovery: {sessions:?}"
    );
    assert!(
        sessions.iter().any(|s| s["ended_reason"] == "stale-session" && s["assistant_session_id"].is_null()),
        "the stale session was ended and its ID cleared: {sessions:?}"
    );
    let fresh = parley.active_session(&id).await["assistant_session_id"].clone();
    assert!(fresh.is_string() && fresh != thread.as_str(), "a new thread: {fresh}");
    let requests = openai.response_requests_for("third question gamma");
    assert_eq!(requests.len(), 1, "the failed resume made no API request: {requests:?}");
    let rebuilt = mock_openai::last_user_text(&requests[0]);
    assert!(
        rebuilt.contains("first question alpha") && rebuilt.contains("second question beta") && rebuilt.contains(HELLO),
        "history-rebuilt prompt: {rebuilt}"
    );
    parley.stop().await;
}

#[tokio::test]
async fn openai_continues_from_the_previous_response_and_recovers_a_forgotten_one() {
    let scratch = Scratch::new("openai");
    let openai = MockOpenAi::start().await;
    let db = TestDb::new().await;
    let parley = Parley::start(&scratch, &db, &openai_env(&openai)).await;
    let id = parley.conversation("openai", &scratch.path("work")).await;

    let turn = parley.turn(&id, "first question alpha").await;
    assert_eq!(turn["status"], "completed", "{turn}; log in {}", scratch.0.display());
    assert_eq!(parley.last_assistant_message(&id).await["content"], HELLO);
    let first = parley.active_session(&id).await["assistant_session_id"].as_str().expect("a response id").to_owned();
    assert!(first.starts_with("resp_"), "{first}");
    let requests = openai.response_requests_for("first question alpha");
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert!(requests[0].get("previous_response_id").is_none(), "{}", requests[0]);

    // Second message: continues from the first response, sending only the new message.
    let turn = parley.turn(&id, "second question beta").await;
    assert_eq!(turn["status"], "completed", "{turn}");
    let requests = openai.response_requests_for("second question beta");
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(requests[0]["previous_response_id"], first.as_str());
    assert!(!input_text(&requests[0]).contains("first question alpha"), "no history when resuming");
    let second = parley.active_session(&id).await["assistant_session_id"].as_str().unwrap().to_owned();
    assert!(second.starts_with("resp_") && second != first, "the newest response continues: {second}");

    // The stored responses expire: 400 previous_response_not_found, answered fresh with
    // the history in the same turn.
    openai.forget_responses();
    let turn = parley.turn(&id, "third question gamma").await;
    assert_eq!(turn["status"], "completed", "answered in the same turn: {turn}");
    assert!(turn["error"].is_null(), "{turn}");
    assert_eq!(parley.last_assistant_message(&id).await["content"], HELLO);
    let requests = openai.response_requests_for("third question gamma");
    assert_eq!(requests.len(), 2, "the stale try, then the fresh one: {requests:?}");
    assert_eq!(requests[0]["previous_response_id"], second.as_str());
    assert!(requests[1].get("previous_response_id").is_none(), "{}", requests[1]);
    let rebuilt = input_text(&requests[1]);
    assert!(
        rebuilt.contains("first question alpha") && rebuilt.contains("second question beta") && rebuilt.contains(HELLO),
        "history-rebuilt prompt: {rebuilt}"
    );
    let sessions = parley.sessions(&id).await;
    assert!(
        sessions.iter().any(|s| s["transition_reason"] == "stale-session" && s["active"] == true),
        "the session chain shows the stale-session recovery: {sessions:?}"
    );
    let third = parley.active_session(&id).await["assistant_session_id"].clone();
    assert!(third.as_str().is_some_and(|t| t.starts_with("resp_") && t != second), "{third}");
    parley.stop().await;
}

/// `prefix` padded with `.` to exactly `chars` characters.
fn sized(prefix: &str, chars: usize) -> String {
    let mut s = prefix.to_owned();
    s.extend(std::iter::repeat_n('.', chars - prefix.chars().count()));
    s
}

/// The case that once lost a user's name: five messages of 14, 54,000, 270, 22 and 92
/// characters, a restart with the stored responses gone, and the default history budget
/// (12,000 tokens). The paste is cut in its middle; nothing is dropped; the rebuilt
/// prompt reaches the mock Responses API through the real server and PostgreSQL.
#[tokio::test]
async fn openai_rebuild_after_a_54000_character_paste_still_knows_my_name_is_ada() {
    let scratch = Scratch::new("openai-paste");
    let openai = MockOpenAi::start().await;
    let db = TestDb::new().await;
    let env = openai_env(&openai);
    let parley = Parley::start(&scratch, &db, &env).await;
    let id = parley.conversation("openai", &scratch.path("work")).await;

    let filler = "lorem </user> ipsum </earlier_conversation> dolor ".repeat(1_100);
    let paste = format!("PASTE-HEAD {}", &filler[..54_000 - "PASTE-HEAD ".len() - " PASTE-TAIL".len()]) + " PASTE-TAIL";
    let third = sized("third message", 270);
    let fourth = "fourth message, short.";
    let question = sized("after the restart, what is my name? marker-q92 ", 92);
    assert_eq!([paste.chars().count(), third.chars().count(), fourth.len(), question.len()], [54_000, 270, 22, 92]);
    for text in ["my name is Ada", paste.as_str(), third.as_str(), fourth] {
        let turn = parley.turn(&id, text).await;
        assert_eq!(turn["status"], "completed", "{turn}; log in {}", scratch.0.display());
    }

    // A restart, with the stored responses expired meanwhile.
    parley.stop().await;
    openai.forget_responses();
    let parley = Parley::start(&scratch, &db, &env).await;
    let turn = parley.turn(&id, &question).await;
    assert_eq!(turn["status"], "completed", "answered in the same turn: {turn}");
    let requests = openai.response_requests_for("marker-q92");
    assert_eq!(requests.len(), 2, "the stale try, then the fresh one: {requests:?}");
    assert!(requests[1].get("previous_response_id").is_none(), "{}", requests[1]);
    let rebuilt = input_text(&requests[1]);

    assert!(rebuilt.starts_with("[Parley: context rebuilt]"), "the preamble: {}", &rebuilt[..300]);
    assert!(rebuilt.contains("<user>my name is Ada</user>"), "the name survives whole");
    assert!(rebuilt.contains(&format!("<user>{third}</user>")) && rebuilt.contains(&format!("<user>{fourth}</user>")));
    assert_eq!(rebuilt.matches(&format!("<assistant>{HELLO}</assistant>")).count(), 4, "every reply is carried");
    // The paste: head and tail kept around the cut marker, its tags escaped.
    let start = rebuilt.find("<user>PASTE-HEAD ").expect("the paste's head");
    let end = rebuilt[start..].find(" PASTE-TAIL</user>").expect("the paste's tail") + start;
    let carried = &rebuilt[start..end];
    let cut: usize = carried
        .split("<cut chars=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .and_then(|n| n.parse().ok())
        .expect("a cut marker in the paste");
    assert!((1_000..54_000).contains(&cut), "{cut} characters cut");
    assert!(carried.contains("&lt;/user&gt;") && carried.contains("&lt;/earlier_conversation&gt;"));
    // The framing holds: four user messages close, the block closes once.
    assert_eq!(rebuilt.matches("</user>").count(), 4);
    assert_eq!(rebuilt.matches("</earlier_conversation>").count(), 1);
    assert!(rebuilt.ends_with(&format!("The new message to answer:\n{question}")));
    // The budget, 12,000 tokens of four characters, is used and not exceeded: the paste's
    // excerpt is measured as the prompt carries it, escaped.
    let block =
        &rebuilt[rebuilt.find("<earlier_conversation>").unwrap()..rebuilt.find("</earlier_conversation>").unwrap()];
    let chars = block.chars().count();
    assert!((46_000..=48_100).contains(&chars), "history of {chars} characters");

    let mut events = sse::connect(&format!("{}/api/conversations/{id}/events", parley.base), None).await;
    let got = sse::read_until(&mut events, Duration::from_secs(30), |m| m.event == "session_reset").await;
    let reset = got.last().expect("a session_reset event");
    assert_eq!(reset.data["reason"], "stale-session");
    assert_eq!(reset.data["history_messages"], 8, "{}", reset.data);
    parley.stop().await;
}

/// `PATCH /api/conversations/{id}` with `body`; returns the answer, which must be 200.
async fn patch_settings(parley: &Parley, conversation: &str, body: Value) -> Value {
    let resp = parley
        .http
        .patch(format!("{}/api/conversations/{conversation}", parley.base))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let answer: Value = resp.json().await.unwrap_or_default();
    assert!(status.is_success(), "PATCH {body}: {status} {answer}");
    answer
}

/// The `system` text of a Messages API request (a string or text blocks).
fn system_text(body: &Value) -> String {
    match &body["system"] {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks.iter().filter_map(|b| b["text"].as_str()).collect::<Vec<_>>().join("\n"),
        _ => String::new(),
    }
}

#[tokio::test]
async fn claude_runs_with_the_conversations_settings_and_each_line_of_a_turn_carries_its_ids() {
    if skip("claude") {
        return;
    }
    let scratch = Scratch::new("claude-settings");
    let anthropic = MockAnthropic::start().await;
    let db = TestDb::new().await;
    let mut env = claude_env(&scratch, &anthropic);
    env.extend([("PARLEY_LOG_FORMAT", "json".to_owned()), ("RUST_LOG", "info,parley_assistant=debug".to_owned())]);
    let parley = Parley::start(&scratch, &db, &env).await;
    let id = parley.conversation("claude", &scratch.path("work")).await;
    let turn = parley.turn(&id, "first question alpha").await;
    assert_eq!(turn["status"], "completed", "{turn}; log in {}", scratch.0.display());

    let changed = patch_settings(
        &parley,
        &id,
        json!({ "model": "claude-settings-test", "system_prompt": "Always sign as ZEBRA-7.", "permission_mode": "plan" }),
    )
    .await;
    assert_eq!(changed["session_ended"], "model-changed");
    let turn = parley.turn(&id, "second question beta").await;
    assert_eq!(turn["status"], "completed", "{turn}; log in {}", scratch.0.display());

    // The CLI ran with the model and the appended prompt, in a fresh session that
    // carries the history.
    let before = anthropic.message_requests_for("first question alpha");
    let after = anthropic.message_requests_for("second question beta");
    // (The second turn's rebuilt prompt quotes the first question too: the first request is the first turn's.)
    let (before, after) = (before.first().expect("a request"), after.last().expect("a request"));
    assert_ne!(before["model"], "claude-settings-test");
    assert!(!system_text(before).contains("ZEBRA-7"));
    assert_eq!(after["model"], "claude-settings-test");
    assert!(system_text(after).contains("Always sign as ZEBRA-7."), "{}", system_text(after));
    assert!(all_text(after).contains("first question alpha"), "history carried: {}", all_text(after));
    // In plan mode (`--permission-mode=plan`) the CLI tells the model so.
    let plan_mode = |body: &Value| body.to_string().to_lowercase().contains("plan mode");
    assert!(!plan_mode(before) && plan_mode(after), "the permission mode reached the CLI");
    let sessions = parley.sessions(&id).await;
    assert_eq!(sessions.len(), 2, "{sessions:?}");
    assert_eq!(sessions[1]["transition_reason"], "model-changed");
    assert_eq!(sessions[1]["settings"]["model"], "claude-settings-test");
    parley.stop().await;

    // Every line the turn logged — the worker's, the adapter's, and those of the tasks
    // the adapter spawned (the prompt written to stdin) — names the conversation and turn.
    let log = std::fs::read_to_string(scratch.path("parley.log")).unwrap();
    let lines: Vec<Value> =
        log.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
    let turn_id = turn["turn_id"].as_str().unwrap();
    let of_turn = |l: &&Value| l["spans"].as_array().is_some_and(|s| s.iter().any(|s| s["turn_id"] == turn_id));
    let adapter: Vec<&Value> =
        lines.iter().filter(|l| l["target"].as_str().is_some_and(|t| t.starts_with("parley_assistant"))).collect();
    assert!(!adapter.is_empty(), "the adapter logged: {log}");
    for line in &adapter {
        let spans = line["spans"].as_array();
        // A warm process started ahead of the first message logs in the conversation's `warm_up`.
        if let Some(span) = spans.and_then(|s| s.iter().find(|s| s["name"] == "warm_up")) {
            assert!(span["conversation_id"] == id.as_str(), "{line}");
            continue;
        }
        let span = spans
            .and_then(|s| s.iter().find(|s| s["name"] == "turn"))
            .unwrap_or_else(|| panic!("outside a turn: {line}"));
        assert!(span["conversation_id"] == id.as_str() && span["turn_id"].is_string(), "{line}");
    }
    let mine: Vec<&Value> = lines.iter().filter(of_turn).collect();
    for message in ["assistant CLI started", "wrote the prompt to the CLI's stdin", "turn finished"] {
        assert!(mine.iter().any(|l| l["message"] == message), "{message:?} not logged in the turn: {mine:#?}");
    }
}

#[tokio::test]
async fn codex_runs_with_the_conversations_model_instructions_and_sandbox() {
    if skip("codex") {
        return;
    }
    let scratch = Scratch::new("codex-settings");
    let openai = MockOpenAi::start().await;
    let db = TestDb::new().await;
    let parley = Parley::start(&scratch, &db, &codex_env(&scratch, &openai)).await;
    let id = parley.conversation("codex", &scratch.path("work")).await;
    let changed = patch_settings(
        &parley,
        &id,
        json!({ "model": "gpt-settings-test", "system_prompt": "Always sign as OKAPI-3.", "permission_mode": "read-only" }),
    )
    .await;
    assert_eq!(changed["permission_mode"], "read-only");
    let turn = parley.turn(&id, "question with settings").await;
    assert_eq!(turn["status"], "completed", "{turn}; log in {}", scratch.0.display());
    let requests = openai.response_requests_for("question with settings");
    let request = requests.last().expect("a request");
    assert_eq!(request["model"], "gpt-settings-test");
    let everything = request.to_string();
    assert!(everything.contains("Always sign as OKAPI-3."), "the developer instructions reach the model: {everything}");
    assert!(everything.contains("read-only"), "the sandbox is described to the model: {everything}");
    parley.stop().await;
}

#[tokio::test]
async fn openai_sends_the_conversations_model_and_instructions() {
    let scratch = Scratch::new("openai-settings");
    let openai = MockOpenAi::start().await;
    let db = TestDb::new().await;
    let parley = Parley::start(&scratch, &db, &openai_env(&openai)).await;
    let id = parley.conversation("openai", &scratch.path("work")).await;
    patch_settings(&parley, &id, json!({ "model": "gpt-settings-test", "system_prompt": "Sign as IBEX-9." })).await;
    let turn = parley.turn(&id, "question with settings").await;
    assert_eq!(turn["status"], "completed", "{turn}");
    let requests = openai.response_requests_for("question with settings");
    assert_eq!(requests[0]["model"], "gpt-settings-test");
    assert_eq!(requests[0]["instructions"], "Sign as IBEX-9.");
    parley.stop().await;
}

/// Which real CLI a replica test drives.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Cli {
    Claude,
    Codex,
}

impl Cli {
    fn name(self) -> &'static str {
        match self {
            Self::Claude => "claude",
            Self::Codex => "codex",
        }
    }

    /// The environment of replica `replica` (`a`, `b`): its own CLI home in the scratch
    /// directory (`claude-config-a`, `codex-home-b`…), the same workspace root.
    fn replica_env(
        self,
        scratch: &Scratch,
        replica: &str,
        anthropic: &MockAnthropic,
        openai: &MockOpenAi,
    ) -> Vec<(&'static str, String)> {
        let mut env = match self {
            Self::Claude => {
                let mut env = claude_env(scratch, anthropic);
                let dir = scratch.path(&format!("claude-config-{replica}"));
                std::fs::create_dir_all(&dir).unwrap();
                env.retain(|(k, _)| *k != "PARLEY_CLAUDE_CONFIG_DIR");
                env.push(("PARLEY_CLAUDE_CONFIG_DIR", dir.display().to_string()));
                env.push(("PARLEY_CLAUDE_ALLOWED_TOOLS", "Bash(echo *)".into()));
                env
            }
            Self::Codex => {
                let mut env = codex_env(scratch, openai);
                let home = scratch.path(&format!("codex-home-{replica}"));
                std::fs::create_dir_all(&home).unwrap();
                std::fs::copy(scratch.path("codex-home/config.toml"), home.join("config.toml")).unwrap();
                env.retain(|(k, _)| *k != "PARLEY_CODEX_HOME");
                env.push(("PARLEY_CODEX_HOME", home.display().to_string()));
                env.push(("PARLEY_CODEX_SANDBOX", "danger-full-access".into()));
                env
            }
        };
        env.push(("PARLEY_WORKER_ID", format!("replica-{replica}")));
        env.push(("PARLEY_METRICS_BIND", "127.0.0.1:0".into()));
        env
    }

    /// The replica's CLI home (wiped by a "container restart").
    fn home(self, scratch: &Scratch, replica: &str) -> PathBuf {
        match self {
            Self::Claude => scratch.path(&format!("claude-config-{replica}")),
            Self::Codex => scratch.path(&format!("codex-home-{replica}")),
        }
    }

    /// The text of the model request that carried `needle` as the user's newest text.
    fn request_for(self, anthropic: &MockAnthropic, openai: &MockOpenAi, needle: &str) -> Vec<Value> {
        match self {
            Self::Claude => anthropic.message_requests_for(needle),
            Self::Codex => openai.response_requests_for(needle),
        }
    }

    /// True when a model request carries turn 1's tool call and its result: Anthropic
    /// `tool_use` / `tool_result` blocks, Responses API `function_call` /
    /// `function_call_output` items.
    fn carries_the_first_tool_call(self, body: &Value) -> bool {
        match self {
            Self::Claude => {
                let blocks: Vec<&Value> = body["messages"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|m| m["content"].as_array().into_iter().flatten())
                    .collect();
                let used = blocks
                    .iter()
                    .any(|b| b["type"] == "tool_use" && b["input"].to_string().contains("echo hello-from-tool"));
                let result = blocks
                    .iter()
                    .any(|b| b["type"] == "tool_result" && b["content"].to_string().contains("hello-from-tool"));
                used && result
            }
            Self::Codex => {
                let items: Vec<&Value> = body["input"].as_array().into_iter().flatten().collect();
                let called = items.iter().any(|i| {
                    i["type"] == "function_call"
                        && i["arguments"].as_str().is_some_and(|a| a.contains("hello-from-tool"))
                });
                let output = items.iter().any(|i| {
                    i["type"] == "function_call_output" && i["output"].to_string().contains("hello-from-tool")
                });
                called && output
            }
        }
    }
}

/// The kinds of the conversation's stored events, oldest first.
async fn event_kinds(db: &TestDb, conversation: &str) -> Vec<String> {
    let client = db.pool.get().await.unwrap();
    let id: uuid::Uuid = conversation.parse().unwrap();
    client
        .query("select kind from event where conversation_id = $1 order by seq", &[&id])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Ten turns alternating between two replicas with separate CLI homes and no shared
/// files (the conversation's directory is wiped before each turn), then a "container
/// restart" (home and workspace wiped, same database), then the stored copy corrupted.
async fn session_survives_replicas_and_restarts(cli: Cli) {
    if skip(cli.name()) {
        return;
    }
    let started = Instant::now();
    let scratch = Scratch::new(&format!("{}-replicas", cli.name()));
    let anthropic = MockAnthropic::start().await;
    let openai = MockOpenAi::start().await;
    let db = TestDb::new().await;
    let envs =
        [cli.replica_env(&scratch, "a", &anthropic, &openai), cli.replica_env(&scratch, "b", &anthropic, &openai)];
    let work = scratch.path("work");
    let mut conversation = None;
    let mut assistant_session: Option<String> = None;
    for turn_no in 1..=10_usize {
        let replica = (turn_no + 1) % 2;
        let parley = Parley::start(&scratch, &db, &envs[replica]).await;
        let id = match &conversation {
            Some(id) => {
                // No shared volume: this replica starts without the other's files.
                let _ = std::fs::remove_dir_all(&work);
                String::clone(id)
            }
            None => parley.conversation(cli.name(), &work).await,
        };
        conversation = Some(id.clone());
        let text =
            if turn_no == 1 { "SCN_TOOL turn-1 run the tool".to_owned() } else { format!("turn-{turn_no} go on") };
        let turn = parley.turn(&id, &text).await;
        assert_eq!(turn["status"], "completed", "turn {turn_no}: {turn}; log in {}", scratch.0.display());
        assert_eq!(turn["worker_id"], format!("replica-{}", ["a", "b"][replica]));
        let active = parley.active_session(&id).await;
        let now = active["assistant_session_id"].as_str().expect("an assistant session ID").to_owned();
        match &assistant_session {
            None => assistant_session = Some(now),
            Some(first) => assert_eq!(&now, first, "turn {turn_no} kept the assistant session"),
        }
        // Each replica process ran this one turn: a restore from turn 2 on, never a rebuild.
        let series =
            |path: &str| format!("parley_stale_recoveries_total{{assistant=\"{}\",path=\"{path}\"}}", cli.name());
        let restored = if turn_no == 1 { 0.0 } else { 1.0 };
        assert_eq!(parley.metric(&series("restored")).await.0, Some(restored), "turn {turn_no}");
        assert_eq!(parley.metric(&series("rebuilt")).await.0, Some(0.0), "turn {turn_no}");
        parley.stop().await;
    }
    let id = conversation.unwrap();
    let requests = cli.request_for(&anthropic, &openai, "turn-10 go on");
    assert!(!requests.is_empty(), "turn 10 reached the model");
    assert!(
        requests.iter().all(|b| cli.carries_the_first_tool_call(b)),
        "turn 10's request carries turn 1's tool call and result: {requests:?}"
    );
    let kinds = event_kinds(&db, &id).await;
    assert_eq!(kinds.iter().filter(|k| *k == "session_restored").count(), 9, "turns 2-10 restored: {kinds:?}");
    assert!(!kinds.iter().any(|k| k == "session_reset"), "{kinds:?}");

    // Container restart: the replica's home and the workspace are gone, the database stays.
    let _ = std::fs::remove_dir_all(cli.home(&scratch, "a"));
    let _ = std::fs::remove_dir_all(&work);
    let envs_a = cli.replica_env(&scratch, "a", &anthropic, &openai);
    let parley = Parley::start(&scratch, &db, &envs_a).await;
    let turn = parley.turn(&id, "turn-11 after the restart").await;
    assert_eq!(turn["status"], "completed", "{turn}; log in {}", scratch.0.display());
    assert_eq!(parley.active_session(&id).await["assistant_session_id"], assistant_session.as_deref().unwrap());
    let requests = cli.request_for(&anthropic, &openai, "turn-11 after the restart");
    assert!(
        !requests.is_empty() && requests.iter().all(|b| cli.carries_the_first_tool_call(b)),
        "after the restart the request carries turn 1's tool call: {requests:?}"
    );
    let sessions = parley.sessions(&id).await;
    let kept = &sessions[0]["transcript"];
    assert_eq!(kept["restores"], 10, "the session listing shows the restores: {sessions:?}");
    assert_eq!(kept["restored_by"], "replica-a");
    assert!(kept["bytes"].as_i64().is_some_and(|b| b > 0), "{kept}");
    // And `parley sessions show` says so.
    let shown = std::process::Command::new(env!("CARGO_BIN_EXE_parley"))
        .args(["sessions", "show", sessions[0]["session_id"].as_str().unwrap()])
        .env("DATABASE_URL", db.url())
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.contains(&format!("kept transcript:      {} bytes of", kept["bytes"])), "{shown}");
    assert!(shown.contains("restored:             10 time(s), last by replica-a at"), "{shown}");
    parley.stop().await;

    // Restart again, with the stored copy damaged too: the history rebuild answers.
    // Claude: the home is wiped and the stored chunks garbled. Codex: the stored copy is
    // deleted and the local rollout corrupted (its first line, the session metadata).
    let client = db.pool.get().await.unwrap();
    let damaged = match cli {
        Cli::Claude => {
            let _ = std::fs::remove_dir_all(cli.home(&scratch, "a"));
            let _ = std::fs::remove_dir_all(&work);
            client.execute("update transcript_chunk set data = 'garbage'::bytea", &[]).await.unwrap()
        }
        Cli::Codex => {
            let rollouts: Vec<PathBuf> = walk(&cli.home(&scratch, "a").join("sessions"))
                .into_iter()
                .filter(|p| p.to_string_lossy().contains(assistant_session.as_deref().unwrap()))
                .collect();
            assert_eq!(rollouts.len(), 1, "{rollouts:?}");
            let text = std::fs::read_to_string(&rollouts[0]).unwrap();
            let rest = text.split_once('\n').map(|(_, rest)| rest).unwrap_or_default();
            std::fs::write(&rollouts[0], format!("{{\"not\":\"metadata\"}}\n{rest}")).unwrap();
            client.execute("delete from transcript", &[]).await.unwrap()
        }
    };
    assert!(damaged > 0);
    let envs_a = cli.replica_env(&scratch, "a", &anthropic, &openai);
    let parley = Parley::start(&scratch, &db, &envs_a).await;
    let turn = parley.turn(&id, "turn-12 from history").await;
    assert_eq!(turn["status"], "completed", "answered in the same turn: {turn}; log in {}", scratch.0.display());
    let sessions = parley.sessions(&id).await;
    assert!(
        sessions.iter().any(|s| s["transition_reason"] == "stale-session" && s["active"] == true),
        "recovered through a fresh session: {sessions:?}"
    );
    let requests = cli.request_for(&anthropic, &openai, "turn-12 from history");
    let rebuilt = requests.iter().any(|b| {
        let text = match cli {
            Cli::Claude => last_user_text(b),
            Cli::Codex => mock_openai::last_user_text(b),
        };
        text.contains("turn-1 run the tool") && text.contains("turn-11 after the restart")
    });
    assert!(rebuilt, "the fresh session's prompt carries the history: {requests:?}");
    let kinds = event_kinds(&db, &id).await;
    assert_eq!(kinds.iter().filter(|k| *k == "session_reset").count(), 1, "{kinds:?}");
    parley.stop().await;
    eprintln!("{} replicas test took {:.1} s", cli.name(), started.elapsed().as_secs_f64());
}

#[tokio::test]
async fn claude_keeps_one_session_across_alternating_replicas_and_restarts() {
    session_survives_replicas_and_restarts(Cli::Claude).await;
}

#[tokio::test]
async fn codex_keeps_one_thread_across_alternating_replicas_and_restarts() {
    session_survives_replicas_and_restarts(Cli::Codex).await;
}

#[tokio::test]
async fn a_transcript_over_the_size_limit_is_not_kept_and_the_other_replica_answers_from_history() {
    if skip("claude") {
        return;
    }
    let scratch = Scratch::new("claude-over-limit");
    let anthropic = MockAnthropic::start().await;
    let openai = MockOpenAi::start().await;
    let db = TestDb::new().await;
    let mut envs = [
        Cli::Claude.replica_env(&scratch, "a", &anthropic, &openai),
        Cli::Claude.replica_env(&scratch, "b", &anthropic, &openai),
    ];
    for env in &mut envs {
        env.push(("PARLEY_TRANSCRIPT_MAX_BYTES", "100".into()));
    }
    let a = Parley::start(&scratch, &db, &envs[0]).await;
    let id = a.conversation("claude", &scratch.path("work")).await;
    assert_eq!(a.turn(&id, "limit first question").await["status"], "completed");
    let first = a.active_session(&id).await["assistant_session_id"].clone();
    assert!(a.sessions(&id).await[0]["transcript"].is_null(), "nothing kept over the limit");
    a.stop().await;
    let log = std::fs::read_to_string(scratch.path("parley.log")).unwrap();
    assert!(log.contains("transcript-max-bytes"), "the skipped snapshot is logged");

    let b = Parley::start(&scratch, &db, &envs[1]).await;
    let turn = b.turn(&id, "limit second question").await;
    assert_eq!(turn["status"], "completed", "{turn}");
    assert_ne!(b.active_session(&id).await["assistant_session_id"], first, "a fresh session");
    let requests = anthropic.message_requests_for("limit second question");
    assert!(requests.iter().any(|r| last_user_text(r).contains("limit first question")), "rebuilt from history");
    let kinds = event_kinds(&db, &id).await;
    assert!(
        kinds.contains(&"session_reset".to_owned()) && !kinds.contains(&"session_restored".to_owned()),
        "{kinds:?}"
    );
    b.stop().await;
}

#[tokio::test]
async fn claude_transcript_path_of_a_long_directory_is_computed_as_the_cli_names_it() {
    if skip("claude") {
        return;
    }
    let scratch = Scratch::new("claude-long-cwd");
    let anthropic = MockAnthropic::start().await;
    let db = TestDb::new().await;
    let env = claude_env(&scratch, &anthropic);
    let parley = Parley::start(&scratch, &db, &env).await;
    // Over 200 characters once absolute, with characters the CLI replaces (`.`, `_`, `é`).
    let cwd = format!("dossier-é.v2/{}/{}", "a_b".repeat(30), "c.d".repeat(30));
    let created = parley.post("/conversations", json!({ "assistant": "claude", "cwd": cwd })).await;
    let id = created["conversation_id"].as_str().unwrap().to_owned();
    assert_eq!(parley.turn(&id, "long directory question").await["status"], "completed");
    let sessions = parley.sessions(&id).await;
    let kept = &sessions[0]["transcript"];
    let relative =
        kept["relative_path"].as_str().unwrap_or_else(|| panic!("the transcript was found and kept: {sessions:?}"));
    let dir = Path::new(relative).parent().unwrap().file_name().unwrap().to_str().unwrap().to_owned();
    assert!(dir.len() > 201 && dir.as_bytes()[200] == b'-', "cut at 200 with a hash suffix: {dir}");
    assert!(dir.contains("dossier---v2"), "é and . became dashes: {dir}");
    let on_disk = walk(&scratch.path("claude-config/projects"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect::<Vec<_>>();
    assert_eq!(on_disk, vec![scratch.path("claude-config").join(relative)], "the CLI wrote it where Parley looked");

    // And the copy is restored there: the CLI resumes from it.
    parley.stop().await;
    std::fs::remove_dir_all(scratch.path("claude-config/projects")).unwrap();
    let parley = Parley::start(&scratch, &db, &env).await;
    assert_eq!(parley.turn(&id, "long directory again").await["status"], "completed");
    let requests = anthropic.message_requests_for("long directory again");
    assert!(requests.iter().all(|b| all_text(b).contains("long directory question")), "resumed: {requests:?}");
    assert_eq!(parley.sessions(&id).await.len(), 1, "the same session");
    parley.stop().await;
}

/// The pids of the test's Claude CLIs alive now (see [`snapshot`]).
fn cli_pids(marker: &str, cwd: &Path) -> Vec<u32> {
    snapshot(marker, cwd).clis.iter().map(|p| pid_of(p)).collect()
}

/// The pids of the test's Claude CLIs alive now that work in `cwd`.
fn cli_pids_in(marker: &str, cwd: &Path) -> Vec<u32> {
    cli_pids(marker, cwd)
        .into_iter()
        .filter(|pid| std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|c| c == cwd))
        .collect()
}

/// The command line of process `pid`, its arguments separated by spaces.
fn cmdline_of(pid: u32) -> String {
    String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default()).replace('\0', " ")
}

/// The pids of the test's `codex app-server` processes alive now that work in `cwd`
/// (found by their `CODEX_HOME`): the ones Parley started, not the native binary that
/// the npm package's node launcher starts under them.
fn codex_pids(scratch: &Scratch, cwd: &Path) -> Vec<u32> {
    let marker = format!("CODEX_HOME={}", scratch.path("codex-home").display());
    processes_of(&marker, cwd)
        .iter()
        .filter(|p| p.split_once(": ").is_some_and(|(_, command)| command.contains(" app-server")))
        .map(|p| pid_of(p))
        .filter(|pid| std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|c| c == cwd))
        .filter(|pid| !parent_runs(*pid, " app-server"))
        .collect()
}

/// The marker of the test's processes: its `CLAUDE_CONFIG_DIR`.
fn claude_marker(scratch: &Scratch) -> String {
    format!("CLAUDE_CONFIG_DIR={}", scratch.path("claude-config").display())
}

#[tokio::test]
async fn claude_follow_up_is_answered_by_the_conversations_warm_process() {
    if skip("claude") {
        return;
    }
    let scratch = Scratch::new("claude-warm");
    let anthropic = MockAnthropic::start().await;
    let db = TestDb::new().await;
    let mut env = claude_env(&scratch, &anthropic);
    env.push(("PARLEY_METRICS_BIND", "127.0.0.1:0".into()));
    env.push(("PARLEY_CLAUDE_ALLOWED_TOOLS", "Bash(echo *)".into()));
    let parley = Parley::start(&scratch, &db, &env).await;
    let cwd = scratch.path("work");
    let marker = claude_marker(&scratch);
    let id = parley.conversation("claude", &cwd).await;
    // Started with the conversation, before its first message.
    let started =
        wait_for(&marker, &cwd, Duration::from_secs(10), "a warm CLI for the new conversation", |s| s.clis.len() == 1)
            .await;
    let pid = pid_of(&started.clis[0]);
    assert!(cmdline_of(pid).contains("--input-format stream-json"), "{}", cmdline_of(pid));

    let first = parley.turn(&id, "first question alpha").await;
    assert_eq!(first["status"], "completed", "{first}; log in {}", scratch.0.display());
    let claude_session = parley.active_session(&id).await["assistant_session_id"].as_str().unwrap().to_owned();
    assert!(cmdline_of(pid).contains(&format!("--session-id {claude_session}")), "{}", cmdline_of(pid));
    // A turn that runs a tool (whose process the end of the turn reaps), then plain ones.
    let turn = parley.turn(&id, "SCN_TOOL second question beta").await;
    assert_eq!(turn["status"], "completed", "{turn}");
    let reply = parley.last_assistant_message(&id).await["content"].as_str().unwrap_or_default().to_owned();
    assert!(reply.contains("hello-from-tool"), "the tool ran on the warm CLI: {reply}");
    assert_eq!(cli_pids(&marker, &cwd), vec![pid], "the same CLI answered the tool turn");
    for question in ["third question gamma", "fourth question delta"] {
        let turn = parley.turn(&id, question).await;
        assert_eq!(turn["status"], "completed", "{turn}");
        assert_eq!(parley.last_assistant_message(&id).await["content"], HELLO);
        assert_eq!(cli_pids(&marker, &cwd), vec![pid], "the same CLI answered {question:?}");
    }
    // The warm CLI kept the context: the fourth request carries the earlier exchanges.
    let requests = anthropic.message_requests_for("fourth question delta");
    let carried = requests.iter().any(|b| {
        let text = all_text(b);
        text.contains("first question alpha") && text.contains("second question beta")
    });
    assert!(carried, "{requests:?}");
    let sessions = parley.sessions(&id).await;
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    assert_eq!(sessions[0]["assistant_session_id"], claude_session.as_str());
    // Four runs served by one process, started once ahead of the first message.
    let (reuses, scraped) = parley.metric("parley_assistant_processes_warm_reuses_total{assistant=\"claude\"}").await;
    assert_eq!(reuses, Some(4.0), "{scraped}");
    let (cold, scraped) = parley.metric("parley_assistant_processes_cold_starts_total{assistant=\"claude\"}").await;
    assert_eq!(cold, Some(1.0), "{scraped}");
    parley.stop().await;
}

#[tokio::test]
async fn claude_warm_process_whose_transcript_was_deleted_is_replaced_restored_and_else_recovered() {
    if skip("claude") {
        return;
    }
    let scratch = Scratch::new("claude-warm-stale");
    let anthropic = MockAnthropic::start().await;
    let db = TestDb::new().await;
    let parley = Parley::start(&scratch, &db, &claude_env(&scratch, &anthropic)).await;
    let cwd = scratch.path("work");
    let marker = claude_marker(&scratch);
    let id = parley.conversation("claude", &cwd).await;
    assert_eq!(parley.turn(&id, "first question alpha").await["status"], "completed");
    assert_eq!(parley.turn(&id, "second question beta").await["status"], "completed");
    let warm = cli_pids(&marker, &cwd);
    assert_eq!(warm.len(), 1, "one warm CLI: {warm:?}");
    let old_session = parley.active_session(&id).await["assistant_session_id"].as_str().unwrap().to_owned();

    // The transcripts disappear while the CLI lives (a wiped volume, another replica):
    // Parley's kept copy is written back (a new file), the CLI holding the old one in
    // memory is replaced, and the same session resumes from the restored file.
    std::fs::remove_dir_all(scratch.path("claude-config/projects")).unwrap();
    let turn = parley.turn(&id, "third question gamma").await;
    assert_eq!(turn["status"], "completed", "{turn}");
    assert!(alive(&warm).is_empty(), "the warm CLI whose transcript was replaced was killed");
    let active = parley.active_session(&id).await;
    assert_eq!(active["assistant_session_id"], old_session.as_str(), "the same session, restored: {active}");
    let kinds = event_kinds(&db, &id).await;
    assert!(
        kinds.contains(&"session_restored".to_owned()) && !kinds.contains(&"session_reset".to_owned()),
        "restored, not reset: {kinds:?}"
    );
    let requests = anthropic.message_requests_for("third question gamma");
    assert!(requests.iter().any(|b| all_text(b).contains("first question alpha")), "resumed context: {requests:?}");
    let warm = cli_pids(&marker, &cwd);
    assert_eq!(warm.len(), 1, "the restored session's CLI is kept warm: {warm:?}");

    // Now Parley's copy goes too: the warm CLI must not hide the lost session.
    std::fs::remove_dir_all(scratch.path("claude-config/projects")).unwrap();
    let kept = db.pool.get().await.unwrap().execute("delete from transcript", &[]).await.unwrap();
    assert_eq!(kept, 1, "Parley kept the transcript");
    let turn = parley.turn(&id, "fourth question delta").await;
    assert_eq!(turn["status"], "completed", "answered in the same turn: {turn}");
    assert!(turn["error"].is_null(), "{turn}");
    assert_eq!(parley.last_assistant_message(&id).await["content"], HELLO);
    assert!(alive(&warm).is_empty(), "the warm CLI that kept the lost session in memory was killed");
    let sessions = parley.sessions(&id).await;
    assert!(
        sessions.iter().any(|s| s["transition_reason"] == "stale-session" && s["active"] == true),
        "the stale session was found and recovered as without warm processes: {sessions:?}"
    );
    let active = parley.active_session(&id).await;
    assert!(active["assistant_session_id"].is_string() && active["assistant_session_id"] != old_session.as_str());
    let requests = anthropic.message_requests_for("fourth question delta");
    let rebuilt = requests.iter().any(|b| {
        let text = last_user_text(b);
        text.contains("first question alpha") && text.contains("third question gamma")
    });
    assert!(rebuilt, "history-rebuilt prompt: {requests:?}");
    // The fresh session's process is kept warm in its turn.
    let now = cli_pids(&marker, &cwd);
    assert_eq!(now.len(), 1, "{now:?}");
    assert_eq!(parley.turn(&id, "fifth question epsilon").await["status"], "completed");
    assert_eq!(cli_pids(&marker, &cwd), now, "the fresh session's CLI answered the next message");
    parley.stop().await;
}

#[tokio::test]
async fn claude_cancel_interrupts_the_warm_process_and_the_next_message_resumes_cold() {
    if skip("claude") {
        return;
    }
    let scratch = Scratch::new("claude-warm-cancel");
    let anthropic = MockAnthropic::start().await;
    let db = TestDb::new().await;
    let mut env = claude_env(&scratch, &anthropic);
    env.push(("RUST_LOG", "info,parley_assistant=debug".to_owned()));
    let parley = Parley::start(&scratch, &db, &env).await;
    let cwd = scratch.path("work");
    let marker = claude_marker(&scratch);
    let id = parley.conversation("claude", &cwd).await;
    assert_eq!(parley.turn(&id, "hello first").await["status"], "completed");
    let warm = cli_pids(&marker, &cwd);
    assert_eq!(warm.len(), 1, "{warm:?}");

    let turn_id = parley.send(&id, "SCN_SLOW tell me a long story").await;
    until(Duration::from_secs(60), "the slow turn never reached the API", || {
        !anthropic.message_requests_for("SCN_SLOW").is_empty()
    })
    .await;
    // The reply streams a word every 250 ms for about 30 s: cancel it midway.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(cli_pids(&marker, &cwd), warm, "the warm CLI runs the slow turn");
    let running = processes_of(&marker, &cwd);
    cancel_and_expect_no_processes_left(&parley, &id, &turn_id, &marker, &cwd, &running).await;
    let log = std::fs::read_to_string(scratch.path("parley.log")).unwrap();
    assert!(log.contains("interrupted the warm claude process's turn"), "interrupted through stdin");

    let turn = parley.turn(&id, "are you still there?").await;
    assert_eq!(turn["status"], "completed", "{turn}");
    let now = cli_pids(&marker, &cwd);
    assert_eq!(now.len(), 1, "{now:?}");
    assert!(!warm.contains(&now[0]), "a new CLI after the cancel");
    let session = parley.active_session(&id).await["assistant_session_id"].as_str().unwrap().to_owned();
    assert!(cmdline_of(now[0]).contains(&format!("--resume {session}")), "{}", cmdline_of(now[0]));
    let requests = anthropic.message_requests_for("are you still there?");
    assert!(requests.iter().any(|b| all_text(b).contains("hello first")), "{requests:?}");
    parley.stop().await;
}

#[tokio::test]
async fn claude_warm_processes_are_evicted_least_recently_used_and_killed_when_idle() {
    if skip("claude") {
        return;
    }
    let scratch = Scratch::new("claude-warm-evict");
    let anthropic = MockAnthropic::start().await;
    let db = TestDb::new().await;
    let mut env = claude_env(&scratch, &anthropic);
    env.push(("PARLEY_CLAUDE_WARM_PROCESSES", "1".into()));
    env.push(("PARLEY_CLAUDE_WARM_IDLE_SECS", "3".into()));
    let parley = Parley::start(&scratch, &db, &env).await;
    let marker = claude_marker(&scratch);
    let (cwd_a, cwd_b) = (scratch.path("a"), scratch.path("b"));
    let a = parley.conversation("claude", &cwd_a).await;
    assert_eq!(parley.turn(&a, "hello from a").await["status"], "completed");
    let warm_a = cli_pids_in(&marker, &cwd_a);
    assert_eq!(warm_a.len(), 1, "{warm_a:?}");

    let b = parley.conversation("claude", &cwd_b).await;
    assert_eq!(parley.turn(&b, "hello from b").await["status"], "completed");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !alive(&warm_a).is_empty() {
        assert!(Instant::now() < deadline, "a's CLI evicted for b's (at most one kept)");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let warm_b = cli_pids_in(&marker, &cwd_b);
    assert_eq!(warm_b.len(), 1, "b's CLI is kept: {warm_b:?}");

    let idle_since = Instant::now();
    while !alive(&warm_b).is_empty() {
        assert!(idle_since.elapsed() < Duration::from_secs(10), "b's idle CLI killed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(idle_since.elapsed() >= Duration::from_secs(2), "killed for being idle, not at once");
    // And b's next message starts cold, resuming its session.
    assert_eq!(parley.turn(&b, "hello again from b").await["status"], "completed");
    let requests = anthropic.message_requests_for("hello again from b");
    assert!(requests.iter().any(|r| all_text(r).contains("hello from b")), "{requests:?}");
    parley.stop().await;
}

#[tokio::test]
async fn claude_settings_change_replaces_the_warm_process() {
    if skip("claude") {
        return;
    }
    let scratch = Scratch::new("claude-warm-settings");
    let anthropic = MockAnthropic::start().await;
    let db = TestDb::new().await;
    let parley = Parley::start(&scratch, &db, &claude_env(&scratch, &anthropic)).await;
    let cwd = scratch.path("work");
    let marker = claude_marker(&scratch);
    let id = parley.conversation("claude", &cwd).await;
    assert_eq!(parley.turn(&id, "first question alpha").await["status"], "completed");
    let warm = cli_pids(&marker, &cwd);
    assert_eq!(warm.len(), 1, "{warm:?}");

    patch_settings(&parley, &id, json!({ "model": "claude-warm-test" })).await;
    assert_eq!(parley.turn(&id, "second question beta").await["status"], "completed");
    assert!(alive(&warm).is_empty(), "the CLI of the old settings was killed");
    let now = cli_pids(&marker, &cwd);
    assert_eq!(now.len(), 1, "{now:?}");
    assert!(cmdline_of(now[0]).contains("--model=claude-warm-test"), "{}", cmdline_of(now[0]));
    let after = anthropic.message_requests_for("second question beta");
    assert_eq!(after.last().expect("a request")["model"], "claude-warm-test");
    parley.stop().await;
}

/// Sends SIGTERM to `parley` and waits up to 20 s for it to exit.
async fn terminate(mut parley: Parley) {
    let pid = parley.child.id().expect("pid");
    let _ = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
    let status = tokio::time::timeout(Duration::from_secs(20), parley.child.wait()).await;
    assert!(status.is_ok(), "parley did not stop within 20 s of SIGTERM");
}

#[tokio::test]
async fn claude_warm_processes_end_with_the_server_however_it_stops() {
    if skip("claude") {
        return;
    }
    let scratch = Scratch::new("claude-warm-end");
    let anthropic = MockAnthropic::start().await;
    let db = TestDb::new().await;
    let env = claude_env(&scratch, &anthropic);
    let marker = claude_marker(&scratch);
    let cwd = scratch.path("work");

    // A graceful shutdown kills the warm CLI.
    let parley = Parley::start(&scratch, &db, &env).await;
    let id = parley.conversation("claude", &cwd).await;
    assert_eq!(parley.turn(&id, "hello one").await["status"], "completed");
    let warm = cli_pids(&marker, &cwd);
    assert_eq!(warm.len(), 1, "{warm:?}");
    terminate(parley).await;
    assert!(alive(&warm).is_empty(), "the warm CLI outlived a graceful shutdown");

    // SIGKILL to Parley alone: the CLI dies with it (parent-death signal, the watchdog).
    let parley = Parley::start(&scratch, &db, &env).await;
    assert_eq!(parley.turn(&id, "hello two").await["status"], "completed");
    let warm = cli_pids(&marker, &cwd);
    assert_eq!(warm.len(), 1, "{warm:?}");
    let mut parley = parley;
    parley.child.kill().await.unwrap();
    let killed_at = Instant::now();
    while !alive(&warm).is_empty() {
        assert!(killed_at.elapsed() < Duration::from_secs(5), "the warm CLI outlived a killed Parley");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    drop(parley);
}

#[tokio::test]
async fn claude_turn_taken_by_another_replica_kills_the_holders_warm_process() {
    if skip("claude") {
        return;
    }
    let scratch = Scratch::new("claude-warm-replicas");
    let anthropic = MockAnthropic::start().await;
    let db = TestDb::new().await;
    let marker = claude_marker(&scratch);
    let env = claude_env(&scratch, &anthropic);
    let with = |worker: &str, workers: &str| {
        let mut env = env.clone();
        env.extend([("PARLEY_WORKER_ID", worker.to_owned()), ("PARLEY_WORKERS", workers.to_owned())]);
        env
    };
    // Replica A alone: conversation X answered, its CLI kept warm on A.
    let a = Parley::start(&scratch, &db, &with("rep-a", "1")).await;
    let (cwd_x, cwd_y) = (scratch.path("x"), scratch.path("y"));
    let x = a.conversation("claude", &cwd_x).await;
    assert_eq!(a.turn(&x, "first question alpha").await["status"], "completed");
    let held = cli_pids_in(&marker, &cwd_x);
    assert_eq!(held.len(), 1, "{held:?}");
    // A's only worker is kept busy by a slow turn of conversation Y.
    let y = a.conversation("claude", &cwd_y).await;
    let slow = a.send(&y, "SCN_SLOW keep replica a busy").await;
    until(Duration::from_secs(60), "the slow turn never started", || {
        !anthropic.message_requests_for("SCN_SLOW").is_empty()
    })
    .await;

    // Replica B takes X's next turn once A's window passed, and A drops its process.
    let b = Parley::start(&scratch, &db, &with("rep-b", "2")).await;
    let turn = b.turn(&x, "second question beta").await;
    assert_eq!(turn["status"], "completed", "{turn}");
    assert_eq!(turn["worker_id"], "rep-b", "{turn}");
    let requests = anthropic.message_requests_for("second question beta");
    assert!(requests.iter().any(|r| all_text(r).contains("first question alpha")), "resumed on B: {requests:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !alive(&held).is_empty() {
        assert!(Instant::now() < deadline, "A kept its warm process after B took the conversation");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let now = cli_pids_in(&marker, &cwd_x);
    assert_eq!(now.len(), 1, "one CLI for the conversation, B's: {now:?}");

    // B, now the holder, answers the next message with its warm process.
    let turn = b.turn(&x, "third question gamma").await;
    assert_eq!(turn["worker_id"], "rep-b", "{turn}");
    assert_eq!(cli_pids_in(&marker, &cwd_x), now, "B's warm process answered");

    let cancelled = a.post(&format!("/conversations/{y}/messages"), json!({ "text": "/cancel" })).await;
    assert_eq!(cancelled["ok"], true, "{cancelled}");
    a.wait_turn(&slow).await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn codex_follow_up_is_answered_by_the_conversations_warm_app_server() {
    if skip("codex") {
        return;
    }
    let scratch = Scratch::new("codex-warm");
    let openai = MockOpenAi::start().await;
    let db = TestDb::new().await;
    let mut env = codex_env(&scratch, &openai);
    env.push(("PARLEY_METRICS_BIND", "127.0.0.1:0".into()));
    let parley = Parley::start(&scratch, &db, &env).await;
    let cwd = scratch.path("work");
    let id = parley.conversation("codex", &cwd).await;
    // Started with the conversation, before its first message.
    let deadline = Instant::now() + Duration::from_secs(20);
    let pid = loop {
        if let [pid] = codex_pids(&scratch, &cwd)[..] {
            break pid;
        }
        assert!(Instant::now() < deadline, "no warm app-server for the new conversation");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    let first = parley.turn(&id, "first question alpha").await;
    assert_eq!(first["status"], "completed", "{first}; log in {}", scratch.0.display());
    assert_eq!(parley.last_assistant_message(&id).await["content"], HELLO);
    let thread = parley.active_session(&id).await["assistant_session_id"].as_str().unwrap().to_owned();
    // The reply streamed as codex wrote it: several text events, not one at the end.
    let texts = event_kinds(&db, &id).await.iter().filter(|k| *k == "text").count();
    assert!(texts > 1, "text events of the first reply: {texts}");
    let turn = parley.turn(&id, "SCN_TOOL second question beta").await;
    assert_eq!(turn["status"], "completed", "{turn}");
    let reply = parley.last_assistant_message(&id).await["content"].as_str().unwrap_or_default().to_owned();
    assert!(reply.contains("hello-from-tool"), "the tool ran on the warm app-server: {reply}");
    assert_eq!(codex_pids(&scratch, &cwd), vec![pid], "the same app-server answered the tool turn");
    for question in ["third question gamma", "fourth question delta"] {
        let turn = parley.turn(&id, question).await;
        assert_eq!(turn["status"], "completed", "{turn}");
        assert_eq!(parley.last_assistant_message(&id).await["content"], HELLO);
        assert_eq!(codex_pids(&scratch, &cwd), vec![pid], "the same app-server answered {question:?}");
    }
    // One thread all along, and the fourth request carries the earlier exchanges.
    let requests = openai.response_requests_for("fourth question delta");
    assert_eq!(requests.len(), 1, "{requests:?}");
    let carried = input_text(&requests[0]);
    assert!(carried.contains("first question alpha") && carried.contains("hello-from-tool"), "{carried}");
    let sessions = parley.sessions(&id).await;
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    assert_eq!(sessions[0]["assistant_session_id"], thread.as_str());
    // Four runs served by one process, started once ahead of the first message.
    let (reuses, scraped) = parley.metric("parley_assistant_processes_warm_reuses_total{assistant=\"codex\"}").await;
    assert_eq!(reuses, Some(4.0), "{scraped}");
    let (cold, scraped) = parley.metric("parley_assistant_processes_cold_starts_total{assistant=\"codex\"}").await;
    assert_eq!(cold, Some(1.0), "{scraped}");
    parley.stop().await;
    assert!(alive(&[pid]).is_empty(), "the warm app-server outlived a graceful shutdown");
}

#[tokio::test]
async fn codex_cancel_interrupts_the_warm_app_server_and_the_next_message_resumes_the_thread() {
    if skip("codex") {
        return;
    }
    let scratch = Scratch::new("codex-warm-cancel");
    let openai = MockOpenAi::start().await;
    let db = TestDb::new().await;
    let mut env = codex_env(&scratch, &openai);
    env.push(("RUST_LOG", "info,parley_assistant=debug".to_owned()));
    let parley = Parley::start(&scratch, &db, &env).await;
    let cwd = scratch.path("work");
    let marker = format!("CODEX_HOME={}", scratch.path("codex-home").display());
    let id = parley.conversation("codex", &cwd).await;
    assert_eq!(parley.turn(&id, "hello first").await["status"], "completed");
    let thread = parley.active_session(&id).await["assistant_session_id"].as_str().unwrap().to_owned();
    let warm = codex_pids(&scratch, &cwd);
    assert_eq!(warm.len(), 1, "{warm:?}");

    let turn_id = parley.send(&id, "SCN_SLOW tell me a long story").await;
    until(Duration::from_secs(60), "the slow turn never reached the API", || {
        !openai.response_requests_for("SCN_SLOW").is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(codex_pids(&scratch, &cwd), warm, "the warm app-server runs the slow turn");
    let running = processes_of(&marker, &cwd);
    cancel_and_expect_no_processes_left(&parley, &id, &turn_id, &marker, &cwd, &running).await;
    let log = std::fs::read_to_string(scratch.path("parley.log")).unwrap();
    assert!(log.contains("interrupted the warm codex process's turn"), "interrupted with turn/interrupt");

    let turn = parley.turn(&id, "are you still there?").await;
    assert_eq!(turn["status"], "completed", "{turn}");
    let now = codex_pids(&scratch, &cwd);
    assert_eq!(now.len(), 1, "{now:?}");
    assert!(!warm.contains(&now[0]), "a new app-server after the cancel");
    assert_eq!(parley.active_session(&id).await["assistant_session_id"], thread.as_str(), "the same thread resumed");
    let requests = openai.response_requests_for("are you still there?");
    assert!(requests.iter().any(|b| input_text(b).contains("hello first")), "{requests:?}");
    parley.stop().await;
}

#[tokio::test]
async fn codex_warm_app_server_whose_rollout_was_deleted_is_replaced_restored_and_else_recovered() {
    if skip("codex") {
        return;
    }
    let scratch = Scratch::new("codex-warm-stale");
    let openai = MockOpenAi::start().await;
    let db = TestDb::new().await;
    let parley = Parley::start(&scratch, &db, &codex_env(&scratch, &openai)).await;
    let cwd = scratch.path("work");
    let id = parley.conversation("codex", &cwd).await;
    assert_eq!(parley.turn(&id, "first question alpha").await["status"], "completed");
    assert_eq!(parley.turn(&id, "second question beta").await["status"], "completed");
    let warm = codex_pids(&scratch, &cwd);
    assert_eq!(warm.len(), 1, "one warm app-server: {warm:?}");
    let thread = parley.active_session(&id).await["assistant_session_id"].as_str().unwrap().to_owned();

    // The rollouts disappear while the app-server lives: Parley's kept copy is written
    // back (a new file), the app-server holding the old one is replaced, and the same
    // thread resumes from the restored file.
    std::fs::remove_dir_all(scratch.path("codex-home/sessions")).unwrap();
    let turn = parley.turn(&id, "third question gamma").await;
    assert_eq!(turn["status"], "completed", "{turn}");
    assert!(alive(&warm).is_empty(), "the app-server whose rollout was replaced was killed");
    assert_eq!(parley.active_session(&id).await["assistant_session_id"], thread.as_str(), "the same thread, restored");
    let kinds = event_kinds(&db, &id).await;
    assert!(
        kinds.contains(&"session_restored".to_owned()) && !kinds.contains(&"session_reset".to_owned()),
        "restored, not reset: {kinds:?}"
    );
    let requests = openai.response_requests_for("third question gamma");
    assert!(requests.iter().any(|b| input_text(b).contains("first question alpha")), "resumed: {requests:?}");
    let warm = codex_pids(&scratch, &cwd);
    assert_eq!(warm.len(), 1, "the restored thread's app-server is kept warm: {warm:?}");

    // Now Parley's copy goes too: the warm app-server must not hide the lost thread.
    std::fs::remove_dir_all(scratch.path("codex-home/sessions")).unwrap();
    let kept = db.pool.get().await.unwrap().execute("delete from transcript", &[]).await.unwrap();
    assert_eq!(kept, 1, "Parley kept the rollout");
    let turn = parley.turn(&id, "fourth question delta").await;
    assert_eq!(turn["status"], "completed", "answered in the same turn: {turn}");
    assert!(turn["error"].is_null(), "{turn}");
    assert!(alive(&warm).is_empty(), "the app-server that kept the lost thread in memory was killed");
    let fresh = parley.active_session(&id).await["assistant_session_id"].clone();
    assert!(fresh.is_string() && fresh != thread.as_str(), "a new thread: {fresh}");
    let requests = openai.response_requests_for("fourth question delta");
    assert_eq!(requests.len(), 1, "{requests:?}");
    let rebuilt = mock_openai::last_user_text(&requests[0]);
    assert!(rebuilt.contains("first question alpha") && rebuilt.contains("third question gamma"), "{rebuilt}");
    parley.stop().await;
}
