//! `parley-bench claude-warm` and `parley-bench codex-warm`: what warm processes buy
//! (`docs/architecture.md#warm-processes`, `docs/architecture.md#warm-codex`). The real
//! CLI answers from a local mock of its API ([`MockAnthropic`] for `claude`,
//! [`MockOpenAi`] for `codex`); one run measures, for follow-up messages (the
//! conversation already has a session):
//!
//! - **cold**: a `parley serve` with warm processes off (`--claude-warm-processes 0`: a
//!   new `claude --resume` per turn; `--codex-warm-processes 0`: a new `codex exec …
//!   resume` per turn), time from `POST …/messages` to the turn's first `text` event on
//!   SSE;
//! - **warm**: the same with 32 warm processes;
//! - **bare**: one warm CLI started here with the same environment and driven over stdin
//!   (`claude -p --input-format stream-json`, timed to its first `text_delta`; `codex
//!   app-server`, timed to its first `item/agentMessage/delta`) — the floor a warm
//!   Parley turn can approach;
//! - the resident memory of the warm processes (`VmRSS`).
//!
//! The driver (servers, conversations, the message loop, the report) is shared; an
//! [`Assistant`] holds what differs. Results: `docs/performance.md#warm-claude-processes`
//! and `docs/performance.md#warm-codex-processes`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use parley_test_support::mock_anthropic::MockAnthropic;
use parley_test_support::mock_openai::MockOpenAi;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};
use uuid::Uuid;

use crate::server::{ScratchDb, Target, rss_kib};
use crate::stats::{Samples, fmt_ms};

/// Options shared by `claude-warm` and `codex-warm`.
#[derive(Debug, clap::Args)]
pub struct WarmOptions {
    /// The `parley` binary (default: `parley` next to this executable).
    #[arg(long)]
    parley_bin: Option<PathBuf>,
    /// Conversations, each answered in turn (one message at a time).
    #[arg(long, default_value_t = 4)]
    conversations: usize,
    /// Follow-up messages measured per conversation (after a first, unmeasured one).
    #[arg(long, default_value_t = 10)]
    follow_ups: usize,
    /// Messages written to the bare warm CLI (after a first, unmeasured one).
    #[arg(long, default_value_t = 40)]
    bare_messages: usize,
    /// PostgreSQL server for the scratch database (default as the load benchmark's).
    #[arg(long)]
    database_url: Option<String>,
}

impl WarmOptions {
    /// The PostgreSQL server for the scratch database.
    #[must_use]
    pub fn admin_url(&self) -> String {
        self.database_url
            .clone()
            .or_else(|| std::env::var("PARLEY_TEST_DATABASE_URL").ok())
            .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".into())
    }
}

/// Options of `parley-bench claude-warm`.
#[derive(Debug, clap::Args)]
pub struct ClaudeWarmArgs {
    /// The `claude` CLI (claude-code 2.1.329; `scripts/install-assistant-clis`).
    #[arg(long, default_value = ".tools/bin/claude")]
    claude_bin: PathBuf,
    #[command(flatten)]
    options: WarmOptions,
}

/// Options of `parley-bench codex-warm`.
#[derive(Debug, clap::Args)]
pub struct CodexWarmArgs {
    /// The `codex` CLI (codex-cli 0.169.0; `scripts/install-assistant-clis`).
    #[arg(long, default_value = ".tools/bin/codex")]
    codex_bin: PathBuf,
    #[command(flatten)]
    options: WarmOptions,
}

/// Runs `claude-warm` and prints its table.
///
/// # Errors
/// When the CLI is missing, or a server, the CLI or a turn fails.
pub async fn run_claude(args: ClaudeWarmArgs) -> Result<()> {
    let mock = Mock::Anthropic(MockAnthropic::start().await);
    run(Assistant::Claude, &args.claude_bin, mock, &args.options).await
}

/// Runs `codex-warm` and prints its table.
///
/// # Errors
/// When the CLI is missing, or a server, the CLI or a turn fails.
pub async fn run_codex(args: CodexWarmArgs) -> Result<()> {
    let mock = Mock::OpenAi(MockOpenAi::start().await);
    run(Assistant::Codex, &args.codex_bin, mock, &args.options).await
}

/// The assistant under test: what differs between the two modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Assistant {
    Claude,
    Codex,
}

/// The mock API the CLI answers from (kept alive for the run).
enum Mock {
    Anthropic(MockAnthropic),
    OpenAi(MockOpenAi),
}

impl Mock {
    fn url(&self) -> String {
        match self {
            Self::Anthropic(m) => m.url(),
            Self::OpenAi(m) => m.url(),
        }
    }
}

/// The report's wording.
struct Labels {
    title: &'static str,
    cold: &'static str,
    warm: &'static str,
    bare: &'static str,
    /// What the bare CLI is, in "the … waited".
    bare_short: &'static str,
}

impl Assistant {
    /// The assistant's name in the API and `--assistant`.
    fn name(self) -> &'static str {
        match self {
            Self::Claude => "claude",
            Self::Codex => "codex",
        }
    }

    fn labels(self) -> Labels {
        match self {
            Self::Claude => Labels {
                title: "Claude follow-up messages, POST → first `text` event (real claude CLI, mock Anthropic API)",
                cold: "cold (new CLI per turn, --resume)",
                warm: "warm (the conversation's live CLI)",
                bare: "bare warm CLI (stdin → first text)",
                bare_short: "bare CLI",
            },
            Self::Codex => Labels {
                title: "Codex follow-up messages, POST → first `text` event (real codex CLI, mock OpenAI Responses API)",
                cold: "cold (codex exec per turn, resume)",
                warm: "warm (the conversation's app-server)",
                bare: "bare app-server (stdin → first delta)",
                bare_short: "bare app-server",
            },
        }
    }

    /// The server flag that sets how many warm processes it keeps.
    fn warm_flag(self) -> &'static str {
        match self {
            Self::Claude => "--claude-warm-processes",
            Self::Codex => "--codex-warm-processes",
        }
    }

    /// Prepares the CLI's home in `scratch` (Codex: a `config.toml` whose `mock` model
    /// provider is the mock, as the end-to-end tests write it).
    fn prepare(self, scratch: &Scratch, mock: &Mock) -> Result<()> {
        if self == Self::Codex {
            let config = format!(
                "model = \"gpt-5.5\"\nmodel_provider = \"mock\"\n\n[model_providers.mock]\nname = \"mock\"\n\
                 base_url = \"{}/v1\"\nenv_key = \"OPENAI_API_KEY\"\nwire_api = \"responses\"\n\
                 request_max_retries = 0\nstream_max_retries = 0\n",
                mock.url()
            );
            std::fs::write(scratch.codex_home().join("config.toml"), config)?;
        }
        Ok(())
    }

    /// The environment the CLI gets against the mock (as the end-to-end tests give it).
    fn cli_env(self, scratch: &Scratch, mock: &Mock) -> Vec<(String, String)> {
        let home = ("HOME", scratch.0.join("home").display().to_string());
        let env: Vec<(&str, String)> = match self {
            Self::Claude => vec![
                home,
                ("CLAUDE_CONFIG_DIR", scratch.claude_config().display().to_string()),
                ("ANTHROPIC_BASE_URL", mock.url()),
                ("ANTHROPIC_API_KEY", "sk-test".into()),
                ("CLAUDE_CODE_MAX_RETRIES", "0".into()),
                ("DISABLE_AUTOUPDATER", "1".into()),
                ("DISABLE_TELEMETRY", "1".into()),
                ("DISABLE_ERROR_REPORTING", "1".into()),
            ],
            Self::Codex => vec![
                home,
                ("CODEX_HOME", scratch.codex_home().display().to_string()),
                ("OPENAI_API_KEY", "sk-test".into()),
            ],
        };
        env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
    }

    /// What the server needs beyond the CLI's environment: the CLI and its home.
    fn server_env(self, bin: &Path, scratch: &Scratch) -> Vec<(&'static str, PathBuf)> {
        match self {
            Self::Claude => {
                vec![("PARLEY_CLAUDE_BIN", bin.to_path_buf()), ("PARLEY_CLAUDE_CONFIG_DIR", scratch.claude_config())]
            }
            Self::Codex => vec![("PARLEY_CODEX_BIN", bin.to_path_buf()), ("PARLEY_CODEX_HOME", scratch.codex_home())],
        }
    }

    /// How to tell this run's warm processes in `/proc`: a line of their environment
    /// and a part of their command line.
    fn process_marker(self, scratch: &Scratch) -> (String, &'static str) {
        match self {
            Self::Claude => {
                (format!("CLAUDE_CONFIG_DIR={}", scratch.claude_config().display()), "--input-format stream-json")
            }
            Self::Codex => (format!("CODEX_HOME={}", scratch.codex_home().display()), " app-server"),
        }
    }

    /// The arguments of a bare warm CLI.
    fn bare_args(self) -> &'static [&'static str] {
        match self {
            Self::Claude => &[
                "-p",
                "--input-format",
                "stream-json",
                "--output-format",
                "stream-json",
                "--verbose",
                "--include-partial-messages",
            ],
            Self::Codex => &["app-server"],
        }
    }

    /// Readies a bare CLI for messages; returns the Codex thread's id (`thread/start`
    /// after `initialize` and `initialized`, codex app-server 0.169.0), `None` for Claude.
    async fn open_bare(self, bare: &mut Bare, cwd: &Path) -> Result<Option<String>> {
        if self == Self::Claude {
            return Ok(None);
        }
        bare.request(1, "initialize", &json!({ "clientInfo": { "name": "bench", "version": "0" } })).await?;
        bare.send(&json!({ "method": "initialized" })).await?;
        let started = bare
            .request(2, "thread/start", &json!({ "cwd": cwd.display().to_string(), "approvalPolicy": "never" }))
            .await?;
        let thread =
            started["thread"]["id"].as_str().ok_or_else(|| anyhow!("thread/start gave no thread id: {started}"))?;
        Ok(Some(thread.to_owned()))
    }

    /// The stdin line of bare message `n`: a stream-json user message (Claude), a
    /// `turn/start` request of id `n + 3` (Codex).
    fn bare_message(self, thread: Option<&str>, n: usize) -> Value {
        let text = format!("Benchmark message {n}: hello");
        match self {
            Self::Claude => json!({
                "type": "user",
                "message": { "role": "user", "content": text },
                "parent_tool_use_id": null,
            }),
            Self::Codex => json!({
                "id": n + 3,
                "method": "turn/start",
                "params": { "threadId": thread, "input": [{ "type": "text", "text": text }] },
            }),
        }
    }

    /// True for the stdout line that carries a turn's first text.
    fn is_text(self, line: &str, parsed: &Value) -> bool {
        match self {
            Self::Claude => line.contains(r#""type":"text_delta""#),
            Self::Codex => parsed["method"] == "item/agentMessage/delta",
        }
    }

    /// True for the stdout line that ends a turn.
    fn is_turn_end(self, parsed: &Value) -> bool {
        match self {
            Self::Claude => parsed["type"] == "result",
            Self::Codex => parsed["method"] == "turn/completed",
        }
    }
}

/// A scratch directory: HOME, the CLI's home, the workspace root; removed at drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("parley-bench-warm-{}", Uuid::new_v4().simple()));
        for sub in ["home", "claude-config", "codex-home", "work"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        Ok(Self(dir))
    }

    fn claude_config(&self) -> PathBuf {
        self.0.join("claude-config")
    }

    fn codex_home(&self) -> PathBuf {
        self.0.join("codex-home")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What one run works with: the assistant, its CLI, the mock, the scratch directory.
struct Bench {
    assistant: Assistant,
    cli: PathBuf,
    mock: Mock,
    scratch: Scratch,
}

/// A `parley serve` running the assistant, killed on drop.
struct Server {
    child: Child,
    target: Target,
}

impl Bench {
    async fn start_server(&self, bin: &Path, db_url: &str, warm: bool) -> Result<Server> {
        let scratch = &self.scratch;
        let mut cmd = tokio::process::Command::new(bin);
        cmd.args(["serve", "--bind", "127.0.0.1:0", "--auth", "off", "--assistant", self.assistant.name()])
            .args(["--rate-limit-per-minute", "0", "--max-event-streams", "0"])
            .args(["--worker-id", if warm { "bench-warm" } else { "bench-cold" }])
            .args([self.assistant.warm_flag(), if warm { "32" } else { "0" }])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("LANG", "C.UTF-8")
            .env("DATABASE_URL", db_url)
            .env("RUST_LOG", std::env::var("PARLEY_BENCH_SERVER_LOG_LEVEL").unwrap_or_else(|_| "warn".into()))
            .env("PARLEY_WORKSPACE_ROOT", scratch.0.join("work"))
            .envs(self.assistant.server_env(&self.cli, scratch))
            .envs(self.assistant.cli_env(scratch, &self.mock))
            .stdout(Stdio::piped())
            .kill_on_drop(true);
        // `PARLEY_BENCH_SERVER_LOG=FILE` keeps the servers' logs (else they are dropped).
        match std::env::var_os("PARLEY_BENCH_SERVER_LOG") {
            Some(path) => cmd.stderr(std::fs::OpenOptions::new().create(true).append(true).open(path)?),
            None => cmd.stderr(Stdio::null()),
        };
        let mut child = cmd.spawn().with_context(|| format!("start {}", bin.display()))?;
        let mut lines = BufReader::new(child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?).lines();
        let base = tokio::time::timeout(Duration::from_secs(60), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(rest) = line.strip_prefix("Parley is listening on ") {
                    return Some(rest.split_whitespace().next().unwrap_or_default().to_owned());
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
        .ok_or_else(|| anyhow!("parley did not start"))?;
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Server { child, target: Target::new(&base, None)? })
    }

    /// Creates a conversation in its own directory; returns its id.
    async fn conversation(&self, target: &Target, dir: &str) -> Result<Uuid> {
        let resp = target
            .http
            .post(target.url("/api/conversations"))
            .json(&json!({ "assistant": self.assistant.name(), "cwd": dir }))
            .send()
            .await?;
        let v: Value = resp.json().await?;
        v["conversation_id"].as_str().ok_or_else(|| anyhow!("no conversation_id in {v}"))?.parse().map_err(Into::into)
    }

    /// Posts messages to each conversation in turn (`1 + follow_ups` each) and returns
    /// the POST → first `text` times of the follow-ups, and the mean time a conversation
    /// waited between the end of one of its turns and the next message.
    async fn drive(
        &self,
        server: &Server,
        label: &str,
        conversations: usize,
        follow_ups: usize,
    ) -> Result<(Samples, Duration)> {
        let mut samples = Samples::default();
        let mut ended: Vec<Option<Instant>> = vec![None; conversations];
        let (mut gaps, mut gap_count) = (Duration::ZERO, 0u32);
        let mut followed = Vec::new();
        for n in 0..conversations {
            let id = self.conversation(&server.target, &format!("{label}-{n}")).await?;
            let events = crate::load::open_sse(&server.target, id).await?;
            followed.push((id, events));
        }
        for round in 0..=follow_ups {
            for (n, (id, events)) in followed.iter_mut().enumerate() {
                while events.try_recv().is_ok() {}
                let posted = Instant::now();
                if let Some(end) = ended[n] {
                    gaps += posted - end;
                    gap_count += 1;
                }
                let turn = server.target.post_message(*id, &format!("Benchmark message {round}: hello")).await?;
                let mut first_text = None;
                let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
                loop {
                    let Ok(Some(e)) = tokio::time::timeout_at(deadline, events.recv()).await else {
                        bail!("turn {turn} did not finish within 60 s");
                    };
                    if e.turn_id != Some(turn) {
                        continue;
                    }
                    match e.kind.as_str() {
                        "text" => {
                            first_text.get_or_insert(e.at - posted);
                        }
                        "turn_completed" => {
                            ended[n] = Some(e.at);
                            break;
                        }
                        "turn_failed" | "turn_cancelled" | "turn_interrupted" => {
                            bail!("turn {turn} ended as {}", e.kind)
                        }
                        _ => {}
                    }
                }
                if round > 0 {
                    samples.push(first_text.ok_or_else(|| anyhow!("turn {turn} had no text"))?);
                }
            }
        }
        Ok((samples, gaps / gap_count.max(1)))
    }

    /// The resident memory of this run's warm processes, in KiB, one group per warm
    /// process tree: a matching process whose parent matches too (the npm `codex`
    /// launcher's native child) joins its parent's group, listed after it.
    fn warm_rss(&self) -> Vec<Vec<u64>> {
        let (marker, cmdline_part) = self.assistant.process_marker(&self.scratch);
        let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
        let matched: Vec<(u32, u32, u64)> = dir
            .flatten()
            .filter_map(|e| {
                let pid: u32 = e.file_name().to_str()?.parse().ok()?;
                let environ = std::fs::read(e.path().join("environ")).ok()?;
                let cmdline =
                    String::from_utf8_lossy(&std::fs::read(e.path().join("cmdline")).ok()?).replace('\0', " ");
                let ours = environ.split(|b| *b == 0).any(|v| v == marker.as_bytes());
                if !(ours && cmdline.contains(cmdline_part)) {
                    return None;
                }
                // `/proc/PID/stat`: "pid (comm) state ppid …"; comm may hold spaces.
                let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
                let ppid = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()?;
                Some((pid, ppid, rss_kib(pid).ok()?))
            })
            .collect();
        let root_of = |mut pid: u32| {
            while let Some(&(_, ppid, _)) = matched.iter().find(|m| m.0 == pid) {
                if !matched.iter().any(|m| m.0 == ppid) {
                    break;
                }
                pid = ppid;
            }
            pid
        };
        let mut groups: Vec<(u32, Vec<u64>)> = Vec::new();
        for &(pid, _, rss) in &matched {
            let root = root_of(pid);
            match groups.iter_mut().find(|g| g.0 == root) {
                Some(g) if pid == root => g.1.insert(0, rss),
                Some(g) => g.1.push(rss),
                None => groups.push((root, vec![rss])),
            }
        }
        groups.into_iter().map(|g| g.1).collect()
    }

    /// One bare warm CLI: `messages` messages after a first one, `gap` apart (after each
    /// turn's end, as a warm conversation's CLI waited between its turns), each timed
    /// from writing its line to the turn's first text.
    async fn bare(&self, messages: usize, gap: Duration) -> Result<Samples> {
        let cwd = self.scratch.0.join("work").join("bare");
        std::fs::create_dir_all(&cwd)?;
        let child = tokio::process::Command::new(&self.cli)
            .args(self.assistant.bare_args())
            .current_dir(&cwd)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(self.assistant.cli_env(&self.scratch, &self.mock))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start {}", self.cli.display()))?;
        let mut bare = Bare::new(child)?;
        let thread = self.assistant.open_bare(&mut bare, &cwd).await?;
        let mut samples = Samples::default();
        for n in 0..=messages {
            let line = self.assistant.bare_message(thread.as_deref(), n);
            let sent = Instant::now();
            bare.send(&line).await?;
            let mut first = None;
            loop {
                let (line, parsed) = bare.next().await?;
                if first.is_none() && self.assistant.is_text(&line, &parsed) {
                    first = Some(sent.elapsed());
                }
                if self.assistant.is_turn_end(&parsed) {
                    break;
                }
            }
            if n > 0 {
                samples.push(first.ok_or_else(|| anyhow!("no text in bare turn {n}"))?);
            }
            // A CLI answers later after a longer wait: wait as long as Parley's did.
            tokio::time::sleep(gap).await;
        }
        bare.stop().await;
        Ok(samples)
    }
}

/// A bare CLI's pipes.
struct Bare {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Bare {
    fn new(mut child: Child) -> Result<Self> {
        let stdin = child.stdin.take().ok_or_else(|| anyhow!("no stdin"))?;
        let lines = BufReader::new(child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?).lines();
        Ok(Self { child, stdin: Some(stdin), lines })
    }

    /// Writes one JSON line to its stdin.
    async fn send(&mut self, line: &Value) -> Result<()> {
        let stdin = self.stdin.as_mut().ok_or_else(|| anyhow!("stdin closed"))?;
        stdin.write_all(format!("{line}\n").as_bytes()).await?;
        stdin.flush().await?;
        Ok(())
    }

    /// The next stdout line, raw and parsed (`Null` when it is not JSON); `PARLEY_BENCH_DEBUG`
    /// prints it.
    async fn next(&mut self) -> Result<(String, Value)> {
        let line = tokio::time::timeout(Duration::from_secs(60), self.lines.next_line())
            .await
            .map_err(|_| anyhow!("the bare CLI went silent"))??
            .ok_or_else(|| anyhow!("the bare CLI exited"))?;
        if std::env::var_os("PARLEY_BENCH_DEBUG").is_some() {
            eprintln!("{}", line.chars().take(200).collect::<String>());
        }
        let parsed = serde_json::from_str(&line).unwrap_or_default();
        Ok((line, parsed))
    }

    /// Sends JSON-RPC request `id` and returns its result, skipping notifications.
    async fn request(&mut self, id: u64, method: &str, params: &Value) -> Result<Value> {
        self.send(&json!({ "id": id, "method": method, "params": params })).await?;
        loop {
            let (_, v) = self.next().await?;
            if v["id"] == id && v.get("method").is_none() {
                if let Some(e) = v.get("error") {
                    bail!("{method} failed: {e}");
                }
                return Ok(v["result"].clone());
            }
        }
    }

    async fn stop(mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill().await;
    }
}

/// Runs one benchmark and prints its table.
async fn run(assistant: Assistant, cli: &Path, mock: Mock, options: &WarmOptions) -> Result<()> {
    if !cli.exists() {
        bail!("{} not found: run scripts/install-assistant-clis", cli.display());
    }
    let bench = Bench { assistant, cli: std::fs::canonicalize(cli)?, mock, scratch: Scratch::new()? };
    assistant.prepare(&bench.scratch, &bench.mock)?;
    let bin = match &options.parley_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()?.with_file_name("parley"),
    };
    let db = ScratchDb::create(&options.admin_url(), "warm").await?;
    let result = async {
        let cold_server = bench.start_server(&bin, &db.url, false).await?;
        let (cold, _) = bench.drive(&cold_server, "cold", options.conversations, options.follow_ups).await?;
        drop(cold_server);
        let warm_server = bench.start_server(&bin, &db.url, true).await?;
        let (warm, gap) = bench.drive(&warm_server, "warm", options.conversations, options.follow_ups).await?;
        let rss = bench.warm_rss();
        let bare = bench.bare(options.bare_messages, gap).await?;
        let mut server = warm_server;
        let _ = server.child.kill().await;
        Ok::<_, anyhow::Error>((cold, warm, bare, rss, gap))
    }
    .await;
    db.drop_now().await;
    let (cold, warm, bare, rss, gap) = result?;
    let labels = assistant.labels();
    let width = [labels.cold, labels.warm, labels.bare].iter().map(|l| l.chars().count()).max().unwrap_or(0);
    let p50 = |s: &Samples| s.percentile_ms(50.0).unwrap_or(f64::NAN);
    println!("{}", labels.title);
    println!("  {:<width$} {}", labels.cold, cold.p50_p99());
    println!("  {:<width$} {}", labels.warm, warm.p50_p99());
    println!("  {:<width$} {}", labels.bare, bare.p50_p99());
    println!(
        "  (the {} waited {} ms between messages, as the warm conversations did)",
        labels.bare_short,
        gap.as_millis()
    );
    println!("  warm / bare p50: {:.2}×   cold / warm p50: {:.1}×", p50(&warm) / p50(&bare), p50(&cold) / p50(&warm));
    println!("  {}", rss_line(&rss));
    Ok(())
}

/// The resident-memory line: one figure per warm process, or per process tree
/// ("launcher + child = sum") when a warm process is more than one.
fn rss_line(groups: &[Vec<u64>]) -> String {
    let mib = |kib: u64| fmt_ms(f64::from(u32::try_from(kib).unwrap_or(u32::MAX)) / 1024.0);
    let processes: usize = groups.iter().map(Vec::len).sum();
    if groups.iter().all(|g| g.len() <= 1) {
        let each: Vec<String> = groups.iter().flatten().map(|k| mib(*k)).collect();
        return format!("warm CLI resident memory: {} MiB each ({processes} processes)", each.join(", "));
    }
    let each: Vec<String> = groups
        .iter()
        .map(|g| {
            let parts: Vec<String> = g.iter().map(|k| mib(*k)).collect();
            format!("{} = {}", parts.join(" + "), mib(g.iter().sum()))
        })
        .collect();
    format!(
        "warm process resident memory, launcher + its native child = sum per conversation: {} MiB \
         ({} conversations, {processes} processes)",
        each.join(", "),
        groups.len()
    )
}
