//! `parley-bench transcripts`: the per-turn cost of keeping an assistant's session file
//! in PostgreSQL (`docs/architecture.md#transcripts`), with the real Claude Code CLI
//! against the mock Anthropic API.
//!
//! One conversation of `--turns` turns, every turn a tool call (the mock's `SCN_TOOL`:
//! a `Bash` `echo`, then its result) resumed in the same session. After each run the
//! same snapshot the worker takes is taken ([`parley_orchestrator::transcript::snapshot`])
//! and timed: bytes written and milliseconds, p50 / p99 / max. Then the file is deleted
//! and restored once ([`parley_orchestrator::transcript::restore`]), and the stored
//! size is compared with the file's (lz4 TOAST compression of `transcript_chunk.data`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use parley_assistant::{Assistant, Chunk, Claude, ClaudeConfig, RunRequest, RunSettings, Secret};
use parley_db::session::{self, NewSession, SessionSettings, Transition};
use parley_orchestrator::transcript;
use parley_test_support::mock_anthropic::MockAnthropic;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::server::ScratchDb;
use crate::stats::{Samples, fmt_ms};

/// Options of `parley-bench transcripts`.
#[derive(Debug, clap::Args)]
pub struct TranscriptArgs {
    /// Turns in the conversation (each with a tool call).
    #[arg(long, default_value_t = 50)]
    turns: usize,
    /// The `claude` executable (claude-code 2.1.329, `scripts/install-assistant-clis`).
    #[arg(long, default_value = ".tools/bin/claude")]
    claude_bin: PathBuf,
    /// Also write each turn's appended bytes to `DIR/chunk-NNN.jsonl` (to compare other
    /// compressors on the same pieces).
    #[arg(long, value_name = "DIR")]
    keep_chunks: Option<PathBuf>,
    /// PostgreSQL server for the scratch database (default: `PARLEY_TEST_DATABASE_URL`,
    /// else `postgres://postgres@127.0.0.1:5432/postgres`).
    #[arg(long)]
    database_url: Option<String>,
}

/// Runs the benchmark and prints its figures.
///
/// # Errors
/// When the CLI is missing, a turn fails, or the database cannot be used.
pub async fn run(args: TranscriptArgs) -> Result<()> {
    if !args.claude_bin.exists() {
        bail!("{} is missing: run scripts/install-assistant-clis", args.claude_bin.display());
    }
    let admin = args
        .database_url
        .clone()
        .or_else(|| std::env::var("PARLEY_TEST_DATABASE_URL").ok())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let db = ScratchDb::create(&admin, "transcripts").await?;
    let result = measure(&args, &db).await;
    db.drop_now().await;
    result
}

async fn measure(args: &TranscriptArgs, db: &ScratchDb) -> Result<()> {
    let scratch = std::env::temp_dir().join(format!("parley-bench-transcripts-{}", Uuid::new_v4().simple()));
    let (config_dir, cwd) = (scratch.join("claude-config"), scratch.join("work"));
    std::fs::create_dir_all(&config_dir)?;
    std::fs::create_dir_all(&cwd)?;
    let anthropic = MockAnthropic::start().await;
    let claude: Arc<dyn Assistant> = Arc::new(Claude::new(ClaudeConfig {
        binary: std::fs::canonicalize(&args.claude_bin)?,
        config_dir: Some(config_dir.clone()),
        api_key: Some(Secret::new("sk-test")),
        base_url: Some(anthropic.url()),
        allowed_tools: vec!["Bash(echo *)".into()],
        ..ClaudeConfig::default()
    }));
    let pool = parley_db::connect(&parley_db::DbConfig::new(db.url.clone())).await?;
    let client = pool.get().await?;
    let conversation = parley_db::conversation::create(
        &client,
        &parley_db::conversation::NewConversation::web("local", "transcript bench", "claude"),
    )
    .await?;
    let mut session = session::start(
        &client,
        &NewSession {
            conversation_id: conversation.conversation_id,
            assistant: "claude",
            parent_session_id: None,
            reason: Transition::FirstMessage,
            history_from_message_id: 0,
            settings: &SessionSettings::default(),
        },
    )
    .await?;

    let (mut millis, mut written) = (Samples::default(), Vec::new());
    let mut file_bytes = 0;
    let started = Instant::now();
    for turn in 1..=args.turns {
        let request = RunRequest {
            prompt: format!("SCN_TOOL turn {turn}: run the tool"),
            message: format!("SCN_TOOL turn {turn}: run the tool"),
            history_messages: 0,
            resume: session.assistant_session_id.clone(),
            cwd: Some(cwd.clone()),
            cancel: CancellationToken::new(),
            run_id: Uuid::new_v4(),
            settings: RunSettings::default(),
            // Cold runs: the cost measured is the snapshot, not the CLI's start-up.
            warm: None,
        };
        let mut stream = claude.run(request);
        let mut completed = false;
        while let Some(chunk) = stream.next().await {
            match chunk.with_context(|| format!("turn {turn}"))? {
                Chunk::SessionStarted { id } => session.assistant_session_id = Some(id),
                Chunk::Completed { .. } => completed = true,
                _ => {}
            }
        }
        if !completed {
            bail!("turn {turn} did not complete");
        }
        let stats = transcript::snapshot(&pool, claude.as_ref(), &session, Some(&cwd), "bench", u64::MAX, None)
            .await
            .with_context(|| format!("turn {turn}: nothing was stored"))?;
        millis.push(stats.elapsed);
        written.push(stats.bytes_written);
        file_bytes = stats.file_bytes;
    }
    let turns_took = started.elapsed();

    // One restore of the whole file, as a replica without it does.
    let file = claude
        .session_file(session.assistant_session_id.as_deref().unwrap_or_default(), Some(&cwd))
        .context("the transcript's path")?;
    if let Some(dir) = &args.keep_chunks {
        let bytes = std::fs::read(file.path())?;
        std::fs::create_dir_all(dir)?;
        let mut at = 0;
        for (i, n) in written.iter().enumerate() {
            let n = usize::try_from(*n)?;
            std::fs::write(dir.join(format!("chunk-{:03}.jsonl", i + 1)), &bytes[at..at + n])?;
            at += n;
        }
    }
    std::fs::remove_file(file.path())?;
    let restore_started = Instant::now();
    let (_, restored) = transcript::restore(&pool, claude.as_ref(), &session, Some(&cwd), "bench").await;
    let restored = restored.context("the restore wrote nothing")?;
    let restore_took = restore_started.elapsed();

    let stored: i64 = client
        .query_one("select coalesce(sum(pg_column_size(data)), 0)::bigint from transcript_chunk", &[])
        .await?
        .get(0);
    let mut sorted = written.clone();
    sorted.sort_unstable();
    let total: u64 = written.iter().sum();
    // Nearest rank, as `Samples` does.
    let pct = |p: usize| sorted[(p * sorted.len()).div_ceil(100).clamp(1, sorted.len()) - 1];
    println!("transcripts: {} turns with a tool call each, claude CLI vs the mock Anthropic API", args.turns);
    println!("  turns took          {:.1} s (CLI runs and snapshots)", turns_took.as_secs_f64());
    println!("  file at the end     {file_bytes} bytes");
    println!(
        "  bytes written/turn  p50 {}  p99 {}  max {}  (sum {total}; turn 1 {})",
        pct(50),
        pct(99),
        sorted.last().copied().unwrap_or(0),
        written.first().copied().unwrap_or(0)
    );
    println!(
        "  snapshot ms/turn    p50 {}  p99 {}  max {}",
        fmt_ms(millis.percentile_ms(50.0).unwrap_or(0.0)),
        fmt_ms(millis.percentile_ms(99.0).unwrap_or(0.0)),
        fmt_ms(millis.percentile_ms(100.0).unwrap_or(0.0))
    );
    #[allow(clippy::cast_precision_loss)]
    let ratio = file_bytes as f64 / stored.max(1) as f64;
    println!("  stored (lz4 TOAST)  {stored} bytes for {file_bytes} ({ratio:.2}x)");
    println!("  restore             {} bytes in {} ms", restored.bytes, fmt_ms(restore_took.as_secs_f64() * 1000.0));
    drop(client);
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(())
}
