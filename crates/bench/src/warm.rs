//! `parley-bench claude-warm`: what warm Claude processes buy
//! (`docs/architecture.md#warm-processes`). The real `claude` CLI answers from the local
//! mock Anthropic API ([`MockAnthropic`]); one run measures, for follow-up messages
//! (the conversation already has a session):
//!
//! - **cold**: a `parley serve` with `--claude-warm-processes 0` (a new CLI per turn,
//!   `--resume`), time from `POST …/messages` to the turn's first `text` event on SSE;
//! - **warm**: the same with warm processes on (the default);
//! - **bare warm CLI**: one `claude -p --input-format stream-json` started here with the
//!   same flags, a stream-json message line written to its stdin, time to its first
//!   `text_delta` — the floor a warm Parley turn can approach;
//! - the resident memory of a warm CLI (`VmRSS`).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use parley_test_support::mock_anthropic::MockAnthropic;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use uuid::Uuid;

use crate::server::{ScratchDb, Target, rss_kib};
use crate::stats::{Samples, fmt_ms};

/// Options of the warm-process benchmark.
#[derive(Debug, clap::Args)]
pub struct WarmArgs {
    /// The `claude` CLI (claude-code 2.1.329; `scripts/install-assistant-clis`).
    #[arg(long, default_value = ".tools/bin/claude")]
    claude_bin: PathBuf,
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

impl WarmArgs {
    /// The PostgreSQL server for the scratch database.
    #[must_use]
    pub fn admin_url(&self) -> String {
        self.database_url
            .clone()
            .or_else(|| std::env::var("PARLEY_TEST_DATABASE_URL").ok())
            .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".into())
    }
}

/// A scratch directory: HOME, `CLAUDE_CONFIG_DIR`, the workspace root; removed at drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("parley-bench-warm-{}", Uuid::new_v4().simple()));
        for sub in ["home", "claude-config", "work"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        Ok(Self(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The environment the CLI gets against the mock (as the end-to-end tests give it).
fn claude_env(scratch: &Scratch, mock: &MockAnthropic) -> Vec<(String, String)> {
    [
        ("HOME", scratch.0.join("home").display().to_string()),
        ("CLAUDE_CONFIG_DIR", scratch.0.join("claude-config").display().to_string()),
        ("ANTHROPIC_BASE_URL", mock.url()),
        ("ANTHROPIC_API_KEY", "sk-test".into()),
        ("CLAUDE_CODE_MAX_RETRIES", "0".into()),
        ("DISABLE_AUTOUPDATER", "1".into()),
        ("DISABLE_TELEMETRY", "1".into()),
        ("DISABLE_ERROR_REPORTING", "1".into()),
    ]
    .map(|(k, v)| (k.to_owned(), v))
    .into()
}

/// A `parley serve` running `claude`, killed on drop.
struct Server {
    child: tokio::process::Child,
    target: Target,
}

async fn start_server(
    bin: &PathBuf,
    claude: &PathBuf,
    db_url: &str,
    scratch: &Scratch,
    mock: &MockAnthropic,
    warm: bool,
) -> Result<Server> {
    let mut cmd = tokio::process::Command::new(bin);
    cmd.args(["serve", "--bind", "127.0.0.1:0", "--auth", "off", "--assistant", "claude"])
        .args(["--rate-limit-per-minute", "0", "--max-event-streams", "0"])
        .args(["--worker-id", if warm { "bench-warm" } else { "bench-cold" }])
        .args(["--claude-warm-processes", if warm { "32" } else { "0" }])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("LANG", "C.UTF-8")
        .env("DATABASE_URL", db_url)
        .env("RUST_LOG", std::env::var("PARLEY_BENCH_SERVER_LOG_LEVEL").unwrap_or_else(|_| "warn".into()))
        .env("PARLEY_CLAUDE_BIN", claude)
        .env("PARLEY_CLAUDE_CONFIG_DIR", scratch.0.join("claude-config"))
        .env("PARLEY_WORKSPACE_ROOT", scratch.0.join("work"))
        .envs(claude_env(scratch, mock))
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

/// Creates a claude conversation in its own directory; returns its id.
async fn conversation(target: &Target, dir: &str) -> Result<Uuid> {
    let resp = target
        .http
        .post(target.url("/api/conversations"))
        .json(&serde_json::json!({ "assistant": "claude", "cwd": dir }))
        .send()
        .await?;
    let v: serde_json::Value = resp.json().await?;
    v["conversation_id"].as_str().ok_or_else(|| anyhow!("no conversation_id in {v}"))?.parse().map_err(Into::into)
}

/// Posts messages to each conversation in turn (`1 + follow_ups` each) and returns the
/// POST → first `text` times of the follow-ups, and the mean time a conversation waited
/// between the end of one of its turns and the next message.
async fn drive(server: &Server, label: &str, conversations: usize, follow_ups: usize) -> Result<(Samples, Duration)> {
    let mut samples = Samples::default();
    let mut ended: Vec<Option<Instant>> = vec![None; conversations];
    let (mut gaps, mut gap_count) = (Duration::ZERO, 0u32);
    let mut followed = Vec::new();
    for n in 0..conversations {
        let id = conversation(&server.target, &format!("{label}-{n}")).await?;
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
                    "turn_failed" | "turn_cancelled" | "turn_interrupted" => bail!("turn {turn} ended as {}", e.kind),
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

/// The resident memory of the warm CLIs of `scratch` (processes whose environment
/// names its config directory and that run `--input-format stream-json`), in KiB each.
fn warm_cli_rss(scratch: &Scratch) -> Vec<u64> {
    let marker = format!("CLAUDE_CONFIG_DIR={}", scratch.0.join("claude-config").display());
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let environ = std::fs::read(e.path().join("environ")).ok()?;
            let cmdline = String::from_utf8_lossy(&std::fs::read(e.path().join("cmdline")).ok()?).replace('\0', " ");
            let ours = environ.split(|b| *b == 0).any(|v| v == marker.as_bytes());
            (ours && cmdline.contains("--input-format stream-json")).then(|| rss_kib(pid).ok()).flatten()
        })
        .collect()
}

/// One bare warm CLI: `messages` stream-json lines after a first one, `gap` apart (after
/// each `result`, as a warm conversation's CLI waited between its turns), each timed to
/// its first `text_delta`.
async fn bare(
    claude: &PathBuf,
    scratch: &Scratch,
    mock: &MockAnthropic,
    messages: usize,
    gap: Duration,
) -> Result<Samples> {
    let cwd = scratch.0.join("work").join("bare");
    std::fs::create_dir_all(&cwd)?;
    let mut child = tokio::process::Command::new(claude)
        .args(["-p", "--input-format", "stream-json", "--output-format", "stream-json", "--verbose"])
        .arg("--include-partial-messages")
        .current_dir(&cwd)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(claude_env(scratch, mock))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("start {}", claude.display()))?;
    let mut stdin = child.stdin.take().ok_or_else(|| anyhow!("no stdin"))?;
    let mut lines = BufReader::new(child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?).lines();
    let mut samples = Samples::default();
    for n in 0..=messages {
        let line = serde_json::json!({
            "type": "user",
            "message": { "role": "user", "content": format!("Benchmark message {n}: hello") },
            "parent_tool_use_id": null,
        });
        let sent = Instant::now();
        stdin.write_all(format!("{line}\n").as_bytes()).await?;
        stdin.flush().await?;
        let mut first = None;
        loop {
            let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
                .await
                .map_err(|_| anyhow!("the bare CLI went silent"))??
                .ok_or_else(|| anyhow!("the bare CLI exited"))?;
            if std::env::var_os("PARLEY_BENCH_DEBUG").is_some() {
                eprintln!("{}", line.chars().take(200).collect::<String>());
            }
            if first.is_none() && line.contains(r#""type":"text_delta""#) {
                first = Some(sent.elapsed());
            }
            let parsed: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if parsed["type"] == "result" {
                break;
            }
        }
        if n > 0 {
            samples.push(first.ok_or_else(|| anyhow!("no text_delta"))?);
        }
        // A CLI answers later after a longer wait: wait as long as Parley's did.
        tokio::time::sleep(gap).await;
    }
    drop(stdin);
    let _ = child.kill().await;
    Ok(samples)
}

/// Runs the benchmark and prints its table.
///
/// # Errors
/// When a server, the CLI or a turn fails.
pub async fn run(args: WarmArgs, admin_url: &str) -> Result<()> {
    if !args.claude_bin.exists() {
        bail!("{} not found: run scripts/install-assistant-clis", args.claude_bin.display());
    }
    let claude = std::fs::canonicalize(&args.claude_bin)?;
    let bin = match &args.parley_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()?.with_file_name("parley"),
    };
    let mock = MockAnthropic::start().await;
    let scratch = Scratch::new()?;
    let db = ScratchDb::create(admin_url, "warm").await?;
    let result = async {
        let cold_server = start_server(&bin, &claude, &db.url, &scratch, &mock, false).await?;
        let (cold, _) = drive(&cold_server, "cold", args.conversations, args.follow_ups).await?;
        drop(cold_server);
        let warm_server = start_server(&bin, &claude, &db.url, &scratch, &mock, true).await?;
        let (warm, gap) = drive(&warm_server, "warm", args.conversations, args.follow_ups).await?;
        let rss = warm_cli_rss(&scratch);
        let bare = bare(&claude, &scratch, &mock, args.bare_messages, gap).await?;
        let mut server = warm_server;
        let _ = server.child.kill().await;
        Ok::<_, anyhow::Error>((cold, warm, bare, rss, gap))
    }
    .await;
    db.drop_now().await;
    let (cold, warm, bare, rss, gap) = result?;
    let p50 = |s: &Samples| s.percentile_ms(50.0).unwrap_or(f64::NAN);
    println!("Claude follow-up messages, POST → first `text` event (real claude CLI, mock Anthropic API)");
    println!("  {:<34} {}", "cold (new CLI per turn, --resume)", cold.p50_p99());
    println!("  {:<34} {}", "warm (the conversation's live CLI)", warm.p50_p99());
    println!("  {:<34} {}", "bare warm CLI (stdin → first text)", bare.p50_p99());
    println!("  (the bare CLI waited {} ms between messages, as the warm conversations did)", gap.as_millis());
    println!("  warm / bare p50: {:.2}×   cold / warm p50: {:.1}×", p50(&warm) / p50(&bare), p50(&cold) / p50(&warm));
    let rss_mib: Vec<String> =
        rss.iter().map(|kib| fmt_ms(f64::from(u32::try_from(*kib).unwrap_or(u32::MAX)) / 1024.0)).collect();
    println!("  warm CLI resident memory: {} MiB each ({} processes)", rss_mib.join(", "), rss.len());
    Ok(())
}
