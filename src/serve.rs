//! `parley serve`: database, migrations, workers and the HTTP server, with graceful
//! shutdown on SIGTERM or ctrl-c.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use parley_assistant::{Demo, DemoConfig};
use parley_orchestrator::{Config, Orchestrator};
use parley_server::AppState;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::Failure;

/// Options of `parley serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on. Without accounts, keep it on loopback.
    #[arg(long, env = "PARLEY_BIND", default_value = "127.0.0.1:8080")]
    bind: SocketAddr,
    /// The assistant of new conversations.
    #[arg(long, env = "PARLEY_ASSISTANT", default_value = "demo", value_parser = ["demo"])]
    assistant: String,
    /// Turns run at once by this replica.
    #[arg(long, env = "PARLEY_WORKERS", default_value_t = 8)]
    workers: usize,
    /// Database connections in the pool.
    #[arg(long, env = "PARLEY_DB_POOL_SIZE", default_value_t = 16)]
    pool_size: usize,
    /// This replica's stable name, stored on the turns it runs; defaults to HOST:PORT.
    #[arg(long, env = "PARLEY_WORKER_ID")]
    worker_id: Option<String>,
    /// Seconds running turns may take to finish at shutdown before being re-queued.
    #[arg(long, env = "PARLEY_SHUTDOWN_GRACE_SECS", default_value_t = 10)]
    shutdown_grace_secs: u64,
    /// Character budget of the history carried into a fresh assistant session.
    #[arg(long, env = "PARLEY_HISTORY_BUDGET_CHARS", default_value_t = 48_000)]
    history_budget_chars: usize,
    /// Largest request body, in bytes.
    #[arg(long, env = "PARLEY_BODY_LIMIT", default_value_t = parley_server::DEFAULT_BODY_LIMIT)]
    body_limit: usize,
    /// Demo assistant: milliseconds between streamed chunks (0 = instant).
    #[arg(long, env = "PARLEY_DEMO_CHUNK_DELAY_MS", default_value_t = 80)]
    demo_chunk_delay_ms: u64,
    /// Seconds a running turn's lease lasts; a replica that stops extending it (crash,
    /// lost database) has its turn re-run elsewhere after this long.
    #[arg(long, env = "PARLEY_LEASE_SECS", default_value_t = 30)]
    lease_secs: u64,
    /// Seconds between looks for expired leases.
    #[arg(long, env = "PARLEY_SWEEP_INTERVAL_SECS", default_value_t = 5)]
    sweep_interval_secs: u64,
    /// Claims of one turn before an expired lease marks it interrupted instead of
    /// re-queueing it.
    #[arg(long, env = "PARLEY_MAX_ATTEMPTS", default_value_t = 3)]
    max_attempts: i32,
    /// Do not apply migrations at start.
    #[arg(long, env = "PARLEY_NO_MIGRATE")]
    no_migrate: bool,
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "cannot listen for SIGTERM; only ctrl-c stops the server");
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Runs the server until a shutdown signal.
pub async fn run(mut db: parley_db::DbConfig, args: ServeArgs) -> Result<(), Failure> {
    db.pool_size = args.pool_size;
    parley_db::ensure_database(&db)
        .await
        .map_err(|e| Failure::failed(format!("cannot reach PostgreSQL ({e}); is it running? see README")))?;
    if !args.no_migrate {
        let report = parley_db::migrate::run(&db).await?;
        if !report.applied.is_empty() {
            info!(applied = ?report.applied, "migrations applied");
        }
    }
    let pool = parley_db::connect(&db).await?;
    let listener = tokio::net::TcpListener::bind(args.bind)
        .await
        .map_err(|e| Failure::failed(format!("cannot listen on {}: {e}", args.bind)))?;
    let local = listener.local_addr().map_err(|e| Failure::failed(e.to_string()))?;
    if !local.ip().is_loopback() {
        warn!(%local, "listening on a non-loopback address without authentication: anyone who can reach it can read and drive every conversation");
    }
    let config = Config {
        worker_id: args.worker_id.unwrap_or_else(|| format!("{}:{}", hostname(), local.port())),
        workers: args.workers,
        shutdown_grace: Duration::from_secs(args.shutdown_grace_secs),
        history_budget_chars: args.history_budget_chars,
        default_assistant: args.assistant.clone(),
        lease: Duration::from_secs(args.lease_secs.max(1)),
        sweep_interval: Duration::from_secs(args.sweep_interval_secs.max(1)),
        max_attempts: args.max_attempts.max(1),
        ..Config::default()
    };
    let demo =
        Demo::new(DemoConfig { chunk_delay: Duration::from_millis(args.demo_chunk_delay_ms), ..DemoConfig::default() });
    let orchestrator = Orchestrator::builder(pool, config)
        .listen(db.clone())
        .assistant(Arc::new(demo))
        .build()
        .map_err(|e| Failure::failed(e.to_string()))?;
    info!(assistant = %args.assistant, worker_id = %orchestrator.config().worker_id, "assistant selected");

    let shutdown = CancellationToken::new();
    let workers = {
        let orch = orchestrator.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move { orch.run_workers(stop).await })
    };
    let state = AppState { orchestrator, shutdown: shutdown.clone(), body_limit: args.body_limit };
    let server = tokio::spawn(parley_server::serve(listener, state, Duration::from_secs(5)));
    info!("Parley is listening on http://{local}");
    println!("Parley is listening on http://{local}  (stop with ctrl-c)");
    shutdown_signal().await;
    info!("shutting down");
    shutdown.cancel();
    let served = server.await;
    let _ = workers.await;
    match served {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Failure::failed(format!("server error: {e}"))),
        Err(e) => Err(Failure::failed(format!("server task failed: {e}"))),
    }
}
