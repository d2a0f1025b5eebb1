//! `parley sessions list|show|delete`: inspect and delete assistant sessions.

use std::io::{BufRead, Write};

use clap::Subcommand;
use parley_db::session::{self, StatusFilter};
use parley_db::{transcript, turn};
use uuid::Uuid;

use crate::Failure;

/// The `sessions` subcommands.
#[derive(Debug, Subcommand)]
pub enum SessionsCommand {
    /// List sessions, oldest first.
    List {
        /// active, ended, failed (last turn failed) or all.
        #[arg(long, default_value = "all", value_parser = ["active", "ended", "failed", "all"])]
        status: String,
        /// Only this conversation's sessions.
        #[arg(long)]
        conversation: Option<Uuid>,
    },
    /// Show one session with its turns, token usage, cost and last error.
    Show {
        /// The session id.
        id: Uuid,
    },
    /// Delete an ended session (its messages stay).
    Delete {
        /// The session id.
        id: Uuid,
        /// Do not ask for confirmation.
        #[arg(long)]
        force: bool,
    },
}

async fn pool(db: &parley_db::DbConfig) -> Result<parley_db::Pool, Failure> {
    let pool = parley_db::connect(db).await?;
    parley_db::check(&pool).await.map_err(|e| Failure::failed(format!("cannot reach PostgreSQL: {e}")))?;
    Ok(pool)
}

fn short(id: Option<&str>) -> String {
    id.map_or_else(|| "-".into(), str::to_owned)
}

/// Sessions (or turns) read per query by `sessions list` (`sessions show`).
const PAGE: i64 = 500;

/// One line of `sessions list`.
fn print_row(s: &session::Session) {
    println!(
        "{:<36}  {:<36}  {:<6}  {:<9}  {:<17}  {:<13}  {:<36}  {}",
        s.session_id,
        s.conversation_id,
        if s.active { "yes" } else { "no" },
        s.assistant,
        s.transition_reason,
        short(s.ended_reason.as_deref()),
        short(s.assistant_session_id.as_deref()),
        short(s.last_error.as_deref()),
    );
}

/// Runs a `sessions` subcommand.
pub async fn run(db: &parley_db::DbConfig, cmd: SessionsCommand) -> Result<(), Failure> {
    let pool = pool(db).await?;
    let client = pool.get().await.map_err(parley_db::DbError::from)?;
    match cmd {
        SessionsCommand::List { status, conversation } => {
            let filter = status.parse::<StatusFilter>().unwrap_or_default();
            println!(
                "{:<36}  {:<36}  {:<6}  {:<9}  {:<17}  {:<13}  {:<36}  LAST ERROR",
                "SESSION",
                "CONVERSATION",
                "ACTIVE",
                "ASSISTANT",
                "STARTED BECAUSE",
                "ENDED BECAUSE",
                "ASSISTANT SESSION ID"
            );
            // Every session, a page at a time (keyset paging: each page costs the same).
            let mut after = None;
            loop {
                let sessions = session::list(&client, filter, conversation, None, after, PAGE).await?;
                after = sessions.last().map(session::ListKey::of);
                let more = sessions.len() == usize::try_from(PAGE).unwrap_or(usize::MAX);
                for s in sessions {
                    print_row(&s);
                }
                if !more {
                    break;
                }
            }
        }
        SessionsCommand::Show { id } => {
            let s = session::get(&client, id).await?;
            let usage = session::usage_totals(&client, id).await?;
            println!("session:              {}", s.session_id);
            println!("conversation:         {}", s.conversation_id);
            println!("assistant:            {}", s.assistant);
            println!("assistant session ID: {}", short(s.assistant_session_id.as_deref()));
            println!("active:               {}", if s.active { "yes" } else { "no" });
            println!("parent session:       {}", s.parent_session_id.map_or_else(|| "-".into(), |p| p.to_string()));
            println!("started:              {} ({})", s.started_at, s.transition_reason);
            if let Some(ended) = s.ended_at {
                println!("ended:                {} ({})", ended, short(s.ended_reason.as_deref()));
            }
            println!("last error:           {}", short(s.last_error.as_deref()));
            match transcript::get(&client, id).await? {
                Some(t) => {
                    println!(
                        "kept transcript:      {} bytes of {} ({}), stored by {} at {}",
                        t.bytes, t.assistant_session_id, t.relative_path, t.stored_by, t.stored_at
                    );
                    match (&t.restored_by, t.restored_at) {
                        (Some(by), Some(at)) => {
                            println!("restored:             {} time(s), last by {by} at {at}", t.restores);
                        }
                        _ => println!("restored:             never"),
                    }
                }
                None => println!("kept transcript:      -"),
            }
            println!("tokens:               {} in, {} out", usage.input_tokens, usage.output_tokens);
            println!("cost:                 ${:.4}", usage.cost_usd);
            println!("turns (oldest first):");
            let (mut after, mut count) = (None, 0_usize);
            loop {
                let turns = turn::list_for_session(&client, id, after, PAGE).await?;
                after = turns.last().map(turn::ListKey::of);
                let more = turns.len() == usize::try_from(PAGE).unwrap_or(usize::MAX);
                count += turns.len();
                for t in turns {
                    println!(
                        "  {}  {:<11}  attempt {}  {}{}",
                        t.turn_id,
                        t.status,
                        t.attempt,
                        t.started_at.map(|s| s.to_string()).unwrap_or_default(),
                        t.error.map(|e| format!("  error: {e}")).unwrap_or_default()
                    );
                }
                if !more {
                    break;
                }
            }
            println!("turns:                {count}");
        }
        SessionsCommand::Delete { id, force } => {
            let s = session::get(&client, id).await?;
            if s.active {
                return Err(Failure::refused(
                    "this is the conversation's active session; reset the conversation (/reset) before deleting it",
                ));
            }
            if !force && !confirm(&format!("Delete session {id} of conversation {}? [y/N] ", s.conversation_id)) {
                return Err(Failure::refused("not deleted"));
            }
            session::delete(&client, id).await?;
            println!("deleted session {id}");
        }
    }
    Ok(())
}

fn confirm(prompt: &str) -> bool {
    print!("{prompt}");
    let _ = std::io::stdout().flush();
    let mut answer = String::new();
    if std::io::stdin().lock().read_line(&mut answer).is_err() {
        return false;
    }
    matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes")
}
