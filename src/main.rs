//! The `parley` command: `serve`, `migrate`, `sessions` and `tokens` (and the hidden
//! `watchdog` that `serve` starts). Parses the command line and calls library code; see
//! `parley --help`.
//!
//! Exit codes: 0 success; 1 failure (database unreachable, server error); 2 usage error;
//! 3 not found or refused (unknown session or token, deleting an active session).

#![forbid(unsafe_code)]

mod serve;
mod sessions;
mod tokens;
mod watchdog;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
    #[command(subcommand)]
    command: Command,
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

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
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
            Command::Tokens(cmd) => tokens::run(&db, cmd).await,
            Command::Watchdog { owner } => watchdog::run(owner).await,
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
