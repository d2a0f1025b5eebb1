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
//! The worker takes the lock in the statement that claims the turn
//! ([`crate::turn::claim`]), on the connection it then keeps; the key is
//! [`KEY_OF_CONVERSATION`]. PostgreSQL releases the lock when the holding connection
//! ends: a crashed replica's locks go with its connections, and `parley serve` opens
//! these connections with an `idle_session_timeout` ([`crate::DbConfig`]), so a replica
//! cut off from the database cannot keep them forever either (the holder keeps its
//! connection busy meanwhile: the lease is extended on it).

use deadpool_postgres::{Object, Pool};
use uuid::Uuid;

use crate::{DbError, DbResult};

/// The advisory-lock key of a conversation's runs, as SQL over a `conversation_id`
/// column: PostgreSQL's 64-bit hash of the conversation's UUID in text form. Lock it by
/// hand (e.g. in a test) with `select pg_advisory_lock(hashtextextended($1::uuid::text, 0))`.
pub const KEY_OF_CONVERSATION: &str = "hashtextextended(conversation_id::text, 0)";

/// A conversation's run lock and the connection that holds (or will hold) it.
///
/// Dropped while held, it closes its connection instead of returning it to the pool,
/// which releases the lock.
#[derive(Debug)]
pub struct RunLock {
    pool: Pool,
    conversation_id: Uuid,
    client: Option<Object>,
    held: bool,
}

impl RunLock {
    /// The run lock of `conversation_id` as [`crate::turn::claim`] left it on `client`,
    /// the connection that claimed the turn: `held` when the claim took it
    /// ([`crate::turn::Claimed::run_locked`]). Further connections come from `pool`.
    #[must_use]
    pub fn claimed(pool: &Pool, client: Object, conversation_id: Uuid, held: bool) -> Self {
        Self { pool: pool.clone(), conversation_id, client: Some(client), held }
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

    /// Tries to take the lock without waiting. Returns false when another connection
    /// holds it.
    ///
    /// # Errors
    /// [`DbError::Unavailable`] / [`DbError::Other`] only.
    pub async fn try_acquire(&mut self) -> DbResult<bool> {
        if self.held {
            return Ok(true);
        }
        let conversation_id = self.conversation_id;
        let client = self.client().await?;
        let stmt = client.prepare_cached("select pg_try_advisory_lock(hashtextextended($1::uuid::text, 0))").await?;
        let result = client.query_one(&stmt, &[&conversation_id]).await;
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
        let unlock = client.prepare_cached("select pg_advisory_unlock(hashtextextended($1::uuid::text, 0))").await;
        let released = match unlock {
            Ok(stmt) => client.query_one(&stmt, &[&self.conversation_id]).await.ok(),
            Err(_) => None,
        }
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
