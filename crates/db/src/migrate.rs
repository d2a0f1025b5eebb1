//! Embedded SQL migrations from the top-level `migrations/` folder, applied with
//! refinery under a PostgreSQL advisory lock so replicas starting together do not race.

use tokio_postgres::NoTls;

use crate::{DbConfig, DbError, DbResult};

mod embedded {
    refinery::embed_migrations!("../../migrations");
}

/// The advisory-lock key that serialises migration runs (`pg_advisory_lock(bigint)`).
/// Arbitrary but fixed: the bytes of "parley" read as an integer.
pub const MIGRATION_LOCK_KEY: i64 = 0x7061_726c_6579;

/// What a migration run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    /// Names of the migrations applied by this run, e.g. `["V1__initial"]`; empty when
    /// the schema was already current.
    pub applied: Vec<String>,
}

/// Applies every pending migration to the database in `config` (which must exist; see
/// [`crate::ensure_database`]).
///
/// Takes a session-level advisory lock on a dedicated connection for the whole run, so
/// concurrent `parley migrate` or `parley serve` starts apply each migration once.
///
/// # Errors
/// [`DbError::Unavailable`] when the server cannot be reached; [`DbError::Other`] when a
/// migration fails (its transaction is rolled back).
pub async fn run(config: &DbConfig) -> DbResult<MigrationReport> {
    run_until(config, refinery::Target::Latest).await
}

/// Applies the pending migrations up to and including version `version` (`4` for
/// `V4__…`), like [`run`]: for tools that write data in an older schema and then upgrade
/// it the way a deployment would (the scale benchmark's data generator, migration tests).
///
/// # Errors
/// As [`run`].
pub async fn run_to(config: &DbConfig, version: u32) -> DbResult<MigrationReport> {
    run_until(config, refinery::Target::Version(version)).await
}

async fn run_until(config: &DbConfig, target: refinery::Target) -> DbResult<MigrationReport> {
    let (mut client, conn) =
        config.pg_config()?.connect(NoTls).await.map_err(|e| DbError::Unavailable(crate::Cause::of(e)))?;
    let conn = tokio::spawn(conn);
    client.execute("select pg_advisory_lock($1)", &[&MIGRATION_LOCK_KEY]).await?;
    let result =
        embedded::migrations::runner().set_abort_divergent(true).set_target(target).run_async(&mut client).await;
    // Unlock even when the run failed; closing the connection would release it too.
    let _ = client.execute("select pg_advisory_unlock($1)", &[&MIGRATION_LOCK_KEY]).await;
    drop(client);
    let _ = conn.await;
    let report = result.map_err(|e| DbError::Other(crate::Cause::new("migration failed", e)))?;
    Ok(MigrationReport { applied: report.applied_migrations().iter().map(ToString::to_string).collect() })
}

/// A fingerprint of the embedded migrations (names and checksums): two binaries with the
/// same fingerprint expect the same schema. Test helpers name template databases by it.
#[must_use]
pub fn fingerprint() -> String {
    let mut acc: u64 = 0xcbf2_9ce4_8422_2325;
    for m in embedded::migrations::runner().get_migrations() {
        for b in m.to_string().bytes().chain(m.checksum().to_le_bytes()) {
            acc ^= u64::from(b);
            acc = acc.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{acc:016x}")
}
