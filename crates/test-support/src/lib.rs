//! Test helpers: a fresh migrated PostgreSQL database per test ([`TestDb`]), a
//! throwaway PostgreSQL cluster for tests that stop the server ([`cluster`]), an SSE
//! client ([`sse`]), and [`skip_missing`] for tests whose prerequisite is missing.
//!
//! Tests use the real PostgreSQL named by `PARLEY_TEST_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`). Each [`TestDb`] is a new database
//! cloned from a template that is migrated once per migration set, and dropped when the
//! `TestDb` is dropped.

#![forbid(unsafe_code)]

pub mod cluster;
pub mod dataset;
pub mod mock_anthropic;
pub mod mock_openai;
pub mod process;
mod served;
pub mod sse;
pub mod telegram;

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

use parley_db::{DbConfig, Pool};
use tokio_postgres::NoTls;

/// The server tests connect to.
#[must_use]
pub fn admin_url() -> String {
    std::env::var("PARLEY_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn url_for(database: &str) -> String {
    let mut cfg = tokio_postgres::Config::from_str(&admin_url()).expect("PARLEY_TEST_DATABASE_URL parses");
    cfg.dbname(database);
    let host = match cfg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".into(),
    };
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    let user = cfg.get_user().unwrap_or("postgres");
    format!("postgres://{user}@{host}:{port}/{database}")
}

async fn admin() -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(&admin_url(), NoTls)
        .await
        .expect("cannot reach PostgreSQL for tests; start it (see README) or set PARLEY_TEST_DATABASE_URL");
    tokio::spawn(conn);
    client
}

/// A fresh, migrated database for one test.
#[derive(Debug)]
pub struct TestDb {
    /// The database's name.
    pub name: String,
    /// How to reach it.
    pub config: DbConfig,
    /// A pool on it.
    pub pool: Pool,
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Advisory-lock key serialising template creation across test processes.
const TEMPLATE_LOCK: i64 = 0x7061_726c_6579_7400;

impl TestDb {
    /// Creates a new database from the migrated template.
    ///
    /// # Panics
    /// When PostgreSQL cannot be reached or the database cannot be created: a test
    /// without its database cannot run.
    pub async fn new() -> Self {
        let template = format!("parley_tpl_{}", parley_db::migrate::fingerprint());
        let client = admin().await;
        client.execute("select pg_advisory_lock($1)", &[&TEMPLATE_LOCK]).await.expect("lock");
        let exists = client
            .query_opt("select 1 from pg_database where datname = $1", &[&template])
            .await
            .expect("query pg_database")
            .is_some();
        if !exists {
            let building = format!("{template}_building");
            client.batch_execute(&format!("drop database if exists {building} with (force)")).await.expect("drop");
            client.batch_execute(&format!("create database {building}")).await.expect("create template");
            parley_db::migrate::run(&DbConfig::new(url_for(&building))).await.expect("migrate template");
            client.batch_execute(&format!("alter database {building} rename to {template}")).await.expect("rename");
        }
        let name = format!(
            "parley_test_{}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            uuid::Uuid::new_v4().simple().to_string().get(..8).unwrap_or("x")
        );
        client
            .batch_execute(&format!("create database {name} template {template}"))
            .await
            .expect("create test database");
        client.execute("select pg_advisory_unlock($1)", &[&TEMPLATE_LOCK]).await.expect("unlock");
        let config = DbConfig::new(url_for(&name));
        let pool = parley_db::connect(&config).await.expect("pool");
        Self { name, config, pool }
    }

    /// Creates a new empty database (no migration applied), for tests that migrate it
    /// themselves (to an older schema first, for example).
    ///
    /// # Panics
    /// When PostgreSQL cannot be reached or the database cannot be created.
    pub async fn empty() -> Self {
        let client = admin().await;
        let name = format!(
            "parley_test_{}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            uuid::Uuid::new_v4().simple().to_string().get(..8).unwrap_or("x")
        );
        client.batch_execute(&format!("create database {name}")).await.expect("create test database");
        let config = DbConfig::new(url_for(&name));
        let pool = parley_db::connect(&config).await.expect("pool");
        Self { name, config, pool }
    }

    /// The database URL, for starting the `parley` binary against it.
    #[must_use]
    pub fn url(&self) -> String {
        self.config.url.clone()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        self.pool.close();
        let name = self.name.clone();
        // Drop runs outside async context; use a private runtime on a thread.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            rt.block_on(async move {
                if let Ok((client, conn)) = tokio_postgres::connect(&admin_url(), NoTls).await {
                    tokio::spawn(conn);
                    let _ = client.batch_execute(&format!("drop database if exists {name} with (force)")).await;
                }
            });
        })
        .join();
    }
}

/// What a test does when a prerequisite is missing: prints `SKIPPED: why` and returns
/// true (the test then returns early) — or, with `CI=true` (as CI runs), panics, since
/// a suite that skips its checks there would pass without testing anything.
///
/// # Panics
/// With `CI=true`.
#[must_use]
pub fn skip_missing(why: &str) -> bool {
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("{why} (CI=true: a missing prerequisite fails the run instead of skipping the test)");
    }
    eprintln!("SKIPPED: {why}");
    true
}
