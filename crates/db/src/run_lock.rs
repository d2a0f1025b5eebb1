//! The run lock: a PostgreSQL session-level advisory lock per conversation, which the
//! worker running an assistant for the conversation holds, on a connection of its own,
//! for the whole run — until the run's processes are gone. A second run in the same
//! conversation (its turn re-run elsewhere while the first run is still stopping)
//! waits for it, so at most one assistant process runs per conversation, and therefore
//! per assistant session ID, across replicas.
//!
//! The key is the conversation rather than the assistant session ID: the ID of a fresh
//! session is only known once the assistant has started, and two runs in one
//! conversation must not overlap anyway (they share its working directory).
//!
//! PostgreSQL releases the lock when the holding connection ends: a crashed replica's
//! locks go with its connections. [`RunLock::try_acquire`] sets `idle_session_timeout`
//! on the holding connection, so a replica cut off from the database cannot keep the
//! lock longer than that either; the holder keeps the connection busy meanwhile (the
//! lease is extended on it).

use std::time::Duration;

use deadpool_postgres::{Object, Pool};
use uuid::Uuid;

use crate::{DbError, DbResult};

/// The advisory-lock key of a conversation's runs: the two halves of its UUID XORed
/// (PostgreSQL's advisory locks take a `bigint`).
#[must_use]
pub fn key(conversation_id: Uuid) -> i64 {
    let (high, low) = conversation_id.as_u64_pair();
    i64::from_ne_bytes((high ^ low).to_ne_bytes())
}

/// A conversation's run lock and the connection that holds (or will hold) it.
///
/// Dropped while held, it closes its connection instead of returning it to the pool,
/// which releases the lock.
#[derive(Debug)]
pub struct RunLock {
    pool: Pool,
    key: i64,
    client: Option<Object>,
    held: bool,
}

impl RunLock {
    /// The run lock of `conversation_id`, not yet taken; connections come from `pool`.
    #[must_use]
    pub fn new(pool: &Pool, conversation_id: Uuid) -> Self {
        Self { pool: pool.clone(), key: key(conversation_id), client: None, held: false }
    }

    /// Whether this handle holds the lock (as far as it knows: see [`Self::check`]).
    #[must_use]
    pub fn is_held(&self) -> bool {
        self.held
    }

    /// The lock's connection, taken from the pool when there is none.
    ///
    /// # Errors
    /// [`DbError::Unavailable`] when no connection can be had.
    pub async fn client(&mut self) -> DbResult<&Object> {
        if self.client.is_none() {
            self.client = Some(self.pool.get().await?);
        }
        self.client.as_ref().ok_or_else(|| DbError::Other("no connection".into()))
    }

    /// Tries to take the lock without waiting; on success the connection's
    /// `idle_session_timeout` becomes `idle_timeout` (rounded up to a millisecond).
    /// Returns false when another connection holds it.
    ///
    /// # Errors
    /// [`DbError::Unavailable`] / [`DbError::Other`] only.
    pub async fn try_acquire(&mut self, idle_timeout: Duration) -> DbResult<bool> {
        if self.held {
            return Ok(true);
        }
        let key = self.key;
        let millis = idle_timeout.as_millis().max(1).to_string();
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "select l from pg_try_advisory_lock($1) l, \
                 lateral (select case when l then set_config('idle_session_timeout', $2, false) end) s",
            )
            .await?;
        let result = client.query_one(&stmt, &[&key, &millis]).await;
        let locked: bool = match result {
            Ok(row) => row.try_get(0)?,
            Err(e) => {
                self.check();
                return Err(e.into());
            }
        };
        self.held = locked;
        Ok(locked)
    }

    /// After an error on the lock's connection: when the connection is closed, the lock
    /// went with it — forgets both. Returns whether the lock is still held.
    pub fn check(&mut self) -> bool {
        if self.client.as_ref().is_some_and(|c| c.is_closed()) {
            self.client = None;
            self.held = false;
        }
        self.held
    }

    /// Releases the lock and returns the connection to the pool (or closes it when the
    /// release fails, which releases the lock too).
    pub async fn release(mut self) {
        let Some(client) = self.client.take() else { return };
        if !self.held {
            return;
        }
        self.held = false;
        let released = client
            .query_one("select pg_advisory_unlock($1), set_config('idle_session_timeout', '0', false)", &[&self.key])
            .await
            .ok()
            .and_then(|row| row.try_get::<_, bool>(0).ok());
        if released != Some(true) {
            tracing::warn!("releasing a run lock failed; closing its connection instead");
            drop(Object::take(client));
        }
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        if self.held
            && let Some(client) = self.client.take()
        {
            // Closing the connection releases every lock it holds.
            drop(Object::take(client));
        }
    }
}
