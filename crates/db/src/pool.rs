//! The connection pool and database creation.

use std::str::FromStr;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;

use crate::{DbError, DbResult};

/// How to reach PostgreSQL.
#[derive(Clone)]
pub struct DbConfig {
    /// A libpq-style URL, e.g. `postgres://postgres@127.0.0.1:5432/parley`.
    pub url: String,
    /// Maximum pooled connections.
    pub pool_size: usize,
    /// How long a caller waits for a pooled connection, or for a new connection to open.
    pub connect_timeout: Duration,
    /// `false` opens connections with `synchronous_commit = off`: for coordination
    /// writes whose loss in a database crash is harmless (turn claims, lease extensions,
    /// notifications), never for conversation data.
    pub synchronous_commit: bool,
    /// `Some(d)` opens connections with `idle_session_timeout = d` (rounded up to a
    /// millisecond): PostgreSQL ends a session idle that long, and with it the advisory
    /// locks it holds. For the coordination pool, whose connections hold the run locks
    /// ([`crate::run_lock`]), so that a replica cut off from the database does not keep
    /// them forever.
    pub idle_session_timeout: Option<Duration>,
}

impl std::fmt::Debug for DbConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password: show only where it points.
        let shown = tokio_postgres::Config::from_str(&self.url).map_or_else(
            |_| "<invalid url>".to_owned(),
            |c| format!("{:?}/{}", c.get_hosts(), c.get_dbname().unwrap_or("")),
        );
        f.debug_struct("DbConfig")
            .field("url", &shown)
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("synchronous_commit", &self.synchronous_commit)
            .field("idle_session_timeout", &self.idle_session_timeout)
            .finish()
    }
}

impl DbConfig {
    /// A configuration with a pool of 16, a 5 s connect timeout, synchronous commits and
    /// no idle-session timeout.
    #[must_use]
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            pool_size: 16,
            connect_timeout: Duration::from_secs(5),
            synchronous_commit: true,
            idle_session_timeout: None,
        }
    }

    /// The parsed URL.
    ///
    /// # Errors
    /// [`DbError::Other`] when the URL does not parse.
    pub fn pg_config(&self) -> DbResult<tokio_postgres::Config> {
        let mut cfg = tokio_postgres::Config::from_str(&self.url)
            .map_err(|e| DbError::Other(crate::Cause::new("invalid database URL", e)))?;
        if cfg.get_connect_timeout().is_none() {
            cfg.connect_timeout(self.connect_timeout);
        }
        if cfg.get_application_name().is_none() {
            cfg.application_name("parley");
        }
        if !self.synchronous_commit {
            let options = cfg.get_options().map_or_else(String::new, |o| format!("{o} "));
            cfg.options(format!("{options}-c synchronous_commit=off"));
        }
        if let Some(idle) = self.idle_session_timeout {
            let options = cfg.get_options().map_or_else(String::new, |o| format!("{o} "));
            cfg.options(format!("{options}-c idle_session_timeout={}", idle.as_millis().max(1)));
        }
        Ok(cfg)
    }
}

/// Creates the database named in `config.url` when it does not exist yet.
///
/// Connects to the server's `postgres` database to do so. Safe to call from several
/// processes at once: a concurrent creation counts as success.
///
/// # Errors
/// [`DbError::Unavailable`] when the server cannot be reached; [`DbError::Other`] when
/// creation fails for another reason (e.g. missing privilege).
pub async fn ensure_database(config: &DbConfig) -> DbResult<()> {
    let target = config.pg_config()?;
    let Some(name) = target.get_dbname().map(str::to_owned) else {
        return Ok(());
    };
    // Try the target first: the common case is that it exists.
    if let Ok((client, conn)) = target.connect(NoTls).await {
        drop(conn);
        drop(client);
        return Ok(());
    }
    let mut admin = target.clone();
    admin.dbname("postgres");
    let (client, conn) = admin.connect(NoTls).await.map_err(|e| DbError::Unavailable(crate::Cause::of(e)))?;
    let conn = tokio::spawn(conn);
    let exists = client.query_opt("select 1 from pg_database where datname = $1", &[&name]).await?.is_some();
    if !exists {
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        match client.batch_execute(&format!("create database {quoted}")).await {
            Ok(()) => tracing::info!(database = %name, "created database"),
            Err(e)
                if e.code() == Some(&SqlState::DUPLICATE_DATABASE) || e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
            }
            Err(e) => return Err(e.into()),
        }
    }
    drop(client);
    conn.abort();
    Ok(())
}

/// Opens a connection pool. Connections are opened lazily, so this succeeds even while
/// the database is down; use [`check`] to test reachability.
///
/// # Errors
/// [`DbError::Other`] when the URL does not parse or the pool cannot be built.
pub async fn connect(config: &DbConfig) -> DbResult<Pool> {
    let pg = config.pg_config()?;
    let manager = Manager::from_config(pg, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
    Pool::builder(manager)
        .max_size(config.pool_size.max(1))
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(config.connect_timeout))
        .create_timeout(Some(config.connect_timeout))
        .recycle_timeout(Some(config.connect_timeout))
        .build()
        .map_err(|e| DbError::Other(crate::Cause::of(e)))
}

/// Runs `select 1` on a pooled connection: the readiness probe.
///
/// # Errors
/// [`DbError::Unavailable`] when the database cannot be reached.
pub async fn check(pool: &Pool) -> DbResult<()> {
    let client = pool.get().await?;
    client.simple_query("select 1").await?;
    Ok(())
}
