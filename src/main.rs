//! The `parley` command: `serve`, `migrate`, `sessions`, `turns`, `tokens`, `export` and `health`
//! (and the hidden `watchdog` that `serve` starts). Parses the command line, sets up
//! logging and calls library code; see `parley --help`.
//!
//! Exit codes: 0 success; 1 failure (database unreachable, server error); 2 usage error;
//! 3 not found or refused (unknown session or token, deleting an active session).

#![forbid(unsafe_code)]

mod container;
mod export;
mod health;
mod serve;
mod sessions;
mod tokens;
mod turns;
mod watchdog;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// jemalloc instead of the system's malloc: its background threads return the pages of
/// freed memory to the system, so the memory of closed connections (thousands of SSE
/// streams) comes back (see `docs/architecture.md#idle-event-streams`).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Default database: the local server, database `parley`.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/parley";

/// Parley: a chat-bot conversation backend that never gets stuck on a dead assistant
/// session.
#[derive(Debug, Parser)]
#[command(name = "parley", version, about, long_about = None)]
struct Cli {
    /// PostgreSQL URL; the database is created when missing.
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL, global = true, hide_default_value = false)]
    database_url: String,
    /// Log format on stderr: `text` (coloured on a terminal) or `json` (one object a
    /// line, with the fields of the spans it was logged in: a turn's `conversation_id`
    /// and `turn_id`).
    #[arg(long, env = "PARLEY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines, in colour only when stderr is a terminal (and `NO_COLOR` is unset).
    Text,
    /// One JSON object a line (tracing-subscriber's JSON format).
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the web API and the turn workers.
    Serve(Box<serve::ServeArgs>),
    /// Apply database migrations and exit.
    Migrate,
    /// Inspect and delete assistant sessions.
    #[command(subcommand)]
    Sessions(sessions::SessionsCommand),
    /// List turns across conversations by status (queued, running, failed, interrupted).
    #[command(subcommand)]
    Turns(turns::TurnsCommand),
    /// Create, list and revoke API tokens of the web API.
    #[command(subcommand)]
    Tokens(tokens::TokensCommand),
    /// Internal: started by `serve`; kills what the server's assistants leave behind
    /// when the server dies (see src/watchdog.rs).
    #[command(hide = true)]
    Watchdog {
        /// The server process, as `PID:START`.
        #[arg(long)]
        owner: String,
    },
    /// Export a conversation (messages, session chain, tool calls) to stdout.
    Export(export::ExportArgs),
    /// Check that a running server is ready (GET /readyz): exit 0 when it is, 1 when not.
    /// The container image's HEALTHCHECK.
    Health(health::HealthArgs),
}

/// An error with the exit code it maps to.
#[derive(Debug)]
pub struct Failure {
    /// The process exit code.
    pub code: u8,
    /// What to print on stderr.
    pub message: String,
}

impl Failure {
    /// Exit code 1: the operation failed.
    pub fn failed(message: impl Into<String>) -> Self {
        Self { code: 1, message: message.into() }
    }

    /// Exit code 3: not found or refused.
    pub fn refused(message: impl Into<String>) -> Self {
        Self { code: 3, message: message.into() }
    }
}

impl From<parley_db::DbError> for Failure {
    fn from(err: parley_db::DbError) -> Self {
        match err {
            parley_db::DbError::NotFound { .. } => Self::refused(err.to_string()),
            other => Self::failed(other.to_string()),
        }
    }
}

impl From<parley_server::launch::LaunchError> for Failure {
    fn from(err: parley_server::launch::LaunchError) -> Self {
        match err {
            parley_server::launch::LaunchError::Db(db) => db.into(),
            other => Self::failed(other.to_string()),
        }
    }
}

/// Logs to stderr at `RUST_LOG`'s level (default `info`). JSON lines carry the event's
/// fields at the top level, and the current span (`span`) and every enclosing one
/// (`spans`) with their fields.
fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).with_span_list(true).init(),
        LogFormat::Text => {
            let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
            builder.with_ansi(colour).init();
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let db = parley_db::DbConfig::new(cli.database_url);
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve::run(db, *args).await,
            Command::Migrate => migrate(&db).await,
            Command::Sessions(cmd) => sessions::run(&db, cmd).await,
            Command::Turns(cmd) => turns::run(&db, cmd).await,
            Command::Tokens(cmd) => tokens::run(&db, cmd).await,
            Command::Watchdog { owner } => watchdog::run(owner).await,
            Command::Export(args) => export::run(&db, args).await,
            Command::Health(args) => health::run(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("error: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

async fn migrate(db: &parley_db::DbConfig) -> Result<(), Failure> {
    parley_db::ensure_database(db).await?;
    let report = parley_db::migrate::run(db).await?;
    if report.applied.is_empty() {
        println!("database is up to date");
    } else {
        println!("applied {}", report.applied.join(", "));
    }
    Ok(())
}
