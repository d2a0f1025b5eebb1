//! `parley turns list [--status S] [--limit N] [--json]`: turns across conversations by
//! status, newest first — the admin view of `GET /api/turns?status=`. Like `parley
//! sessions`, it reads the database directly, so it sees every principal's turns.

use clap::Subcommand;
use parley_db::turn::{self, Turn, TurnStatus};

use crate::Failure;

/// The `turns` subcommands.
#[derive(Debug, Subcommand)]
pub enum TurnsCommand {
    /// List turns by status, newest first (by the message they answer): id,
    /// conversation, status, attempt, worker, created, error.
    List {
        /// queued, running, failed or interrupted. Default: all four.
        #[arg(long, value_parser = ["queued", "running", "failed", "interrupted"])]
        status: Option<String>,
        /// The most turns shown (1 to 1000).
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(i64).range(1..=1000))]
        limit: i64,
        /// One JSON document `{"turns": [...]}`, each turn as `GET /api/turns/{id}` shows it.
        #[arg(long)]
        json: bool,
    },
}

/// The newest `limit` turns with one of `statuses`, newest first.
async fn newest(
    client: &impl parley_db::GenericClient,
    statuses: &[TurnStatus],
    limit: i64,
) -> Result<Vec<Turn>, Failure> {
    let mut turns = Vec::new();
    // Each status is listed newest first over its own index; the newest `limit` of their
    // union are among the first `limit` of each.
    for status in statuses {
        turns.extend(turn::list_by_status(client, *status, None, limit).await?);
    }
    turns.sort_by(|a, b| b.user_message_id.cmp(&a.user_message_id).then(b.turn_id.cmp(&a.turn_id)));
    turns.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    Ok(turns)
}

/// At most `max` characters of `s` on one line.
fn cell(s: &str, max: usize) -> String {
    let line = s.replace(['\n', '\r'], " ");
    match line.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &line[..i]),
        None => line,
    }
}

/// Runs a `turns` subcommand.
///
/// # Errors
/// Exit 1 when the database fails or stdout cannot be written.
pub async fn run(db: &parley_db::DbConfig, cmd: TurnsCommand) -> Result<(), Failure> {
    let TurnsCommand::List { status, limit, json } = cmd;
    let statuses: Vec<TurnStatus> = match status.as_deref().and_then(|s| s.parse::<TurnStatus>().ok()) {
        Some(s) => vec![s],
        None => turn::LISTED_STATUSES.to_vec(),
    };
    let pool = parley_db::connect(db).await?;
    parley_db::check(&pool).await.map_err(|e| Failure::failed(format!("cannot reach PostgreSQL: {e}")))?;
    let client = pool.get().await.map_err(parley_db::DbError::from)?;
    let turns = newest(&client, &statuses, limit).await?;
    if json {
        let doc = serde_json::json!({ "turns": turns });
        println!("{}", serde_json::to_string_pretty(&doc).map_err(|e| Failure::failed(e.to_string()))?);
        return Ok(());
    }
    println!(
        "{:<36}  {:<36}  {:<11}  {:>7}  {:<24}  {:<19}  ERROR",
        "TURN", "CONVERSATION", "STATUS", "ATTEMPT", "WORKER", "CREATED"
    );
    for t in &turns {
        println!(
            "{:<36}  {:<36}  {:<11}  {:>7}  {:<24}  {:<19}  {}",
            t.turn_id,
            t.conversation_id,
            t.status,
            t.attempt,
            cell(t.worker_id.as_deref().unwrap_or("-"), 24),
            t.created_at.format("%Y-%m-%d %H:%M:%S"),
            cell(t.error.as_deref().unwrap_or("-"), 80),
        );
    }
    if turns.is_empty() {
        eprintln!("no {} turns", status.as_deref().unwrap_or("queued, running, failed or interrupted"));
    }
    Ok(())
}
