//! PostgreSQL counters read around a load: commits of one database
//! (`pg_stat_database.xact_commit`, every committed transaction, read-only ones too),
//! transaction ids handed out (`pg_current_snapshot()` xmax: only transactions that
//! write get one, and only those flush WAL at commit — but it counts the whole
//! cluster), WAL bytes and WAL records (`pg_current_wal_lsn()`, `pg_stat_wal`; cluster).
//!
//! PostgreSQL 15 backends publish their statistics at most once a second and, when
//! idle, up to 10 s later ([`STATS_SETTLE`]), so a reading is only complete after that.

use std::time::{Duration, Instant};

use anyhow::Result;

/// How long to wait for every backend's pending statistics to be published.
pub const STATS_SETTLE: Duration = Duration::from_millis(11_500);

/// One reading.
#[derive(Debug, Clone, Copy)]
pub struct Counters {
    /// When it was read.
    pub at: Instant,
    /// `xact_commit` of the watched database.
    pub commits: i64,
    /// The next transaction id (cluster-wide).
    pub next_xid: i64,
    /// WAL position in bytes (cluster-wide).
    pub wal_bytes: i64,
    /// `pg_stat_wal.wal_records` (cluster-wide).
    pub wal_records: i64,
}

impl Counters {
    /// Reads the counters for database `datname` through `client`.
    ///
    /// # Errors
    /// When the query fails.
    pub async fn read(client: &tokio_postgres::Client, datname: &str) -> Result<Self> {
        client.batch_execute("select pg_stat_clear_snapshot()").await?;
        let row = client
            .query_one(
                "select (select xact_commit from pg_stat_database where datname = $1)::bigint, \
                        pg_snapshot_xmax(pg_current_snapshot())::text::bigint, \
                        (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint, \
                        (select wal_records from pg_stat_wal)::bigint",
                &[&datname],
            )
            .await?;
        Ok(Self {
            at: Instant::now(),
            commits: row.try_get::<_, Option<i64>>(0)?.unwrap_or(0),
            next_xid: row.try_get(1)?,
            wal_bytes: row.try_get(2)?,
            wal_records: row.try_get(3)?,
        })
    }

    /// `self − earlier`, counter by counter.
    #[must_use]
    pub fn since(&self, earlier: &Counters) -> Delta {
        Delta {
            secs: (self.at - earlier.at).as_secs_f64(),
            commits: self.commits - earlier.commits,
            xids: self.next_xid - earlier.next_xid,
            wal_bytes: self.wal_bytes - earlier.wal_bytes,
            wal_records: self.wal_records - earlier.wal_records,
        }
    }
}

/// The change of [`Counters`] over an interval.
#[derive(Debug, Clone, Copy, Default)]
pub struct Delta {
    /// Length of the interval, in seconds.
    pub secs: f64,
    /// Commits in the watched database.
    pub commits: i64,
    /// Transaction ids assigned (writing transactions), cluster-wide.
    pub xids: i64,
    /// WAL bytes written, cluster-wide.
    pub wal_bytes: i64,
    /// WAL records written, cluster-wide.
    pub wal_records: i64,
}
