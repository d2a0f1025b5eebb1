//! `parley export CONVERSATION_ID [--format json|markdown]`: a conversation, its session
//! chain and its messages with their tool calls, written to stdout as it is read (the
//! same document as `GET /api/conversations/{id}/export`). The CLI reads the database
//! directly, like `parley sessions`, so it sees every principal's conversations.

use std::io::Write;

use clap::Args;
use futures::StreamExt;
use parley_orchestrator::export::{self, Format};
use uuid::Uuid;

use crate::Failure;

/// Options of `parley export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The conversation's id.
    conversation_id: Uuid,
    /// `json` (one document) or `markdown` (a readable transcript).
    #[arg(long, default_value = "json", value_parser = ["json", "markdown", "md"])]
    format: String,
}

/// Runs `parley export`.
///
/// # Errors
/// Exit code 3 for an unknown conversation, 1 when the database fails or stdout closes.
pub async fn run(db: &parley_db::DbConfig, args: ExportArgs) -> Result<(), Failure> {
    let pool = parley_db::connect(db).await?;
    parley_db::check(&pool).await.map_err(|e| Failure::failed(format!("cannot reach PostgreSQL: {e}")))?;
    let conversation = {
        let client = pool.get().await.map_err(parley_db::DbError::from)?;
        parley_db::conversation::get(&client, args.conversation_id).await?
    };
    let format = Format::parse(&args.format).unwrap_or_default();
    let mut pieces = std::pin::pin!(export::export(pool, conversation, format, chrono::Utc::now()));
    let mut out = std::io::stdout().lock();
    while let Some(piece) = pieces.next().await {
        out.write_all(piece?.as_bytes()).map_err(|e| Failure::failed(format!("cannot write the export: {e}")))?;
    }
    out.flush().map_err(|e| Failure::failed(format!("cannot write the export: {e}")))
}
