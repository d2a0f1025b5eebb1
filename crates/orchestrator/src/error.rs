//! [`OrchestratorError`]: what the pipeline's entry points report to surfaces.

use parley_db::DbError;
use thiserror::Error;

/// An error from an orchestrator entry point. Surfaces map it to their protocol:
/// `NotFound` → 404, `InvalidInput` and `InvalidSetting` → 400, `Conflict` → 409,
/// `IdempotencyKeyReused` → 422, `TooManyQueued` → 429, `Db(Unavailable)` → 503,
/// anything else → 500.
#[derive(Debug, Error)]
pub enum OrchestratorError {
    /// The conversation (or other named thing) does not exist.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The request cannot be accepted as given; the message says why.
    #[error("{0}")]
    InvalidInput(String),
    /// A conversation setting is invalid; `code` names which (`invalid_title`,
    /// `invalid_assistant`, `invalid_model`, `invalid_system_prompt`,
    /// `invalid_permission_mode`, `invalid_cwd`). Nothing was stored.
    #[error("{message}")]
    InvalidSetting {
        /// Machine-readable code.
        code: &'static str,
        /// Readable explanation.
        message: String,
    },
    /// The conversation's state does not allow the request; the message says why.
    #[error("{0}")]
    Conflict(String),
    /// The conversation already has `limit` turns waiting ([`crate::Config::max_queued_turns`]);
    /// the message was not stored. Retry once some have run.
    #[error(
        "this conversation already has {queued} messages waiting to be answered (the limit is {limit}); wait for them or /cancel"
    )]
    TooManyQueued {
        /// Turns waiting now.
        queued: i64,
        /// The configured limit.
        limit: usize,
    },
    /// The idempotency key (an `Idempotency-Key`, a generic webhook's `X-Delivery-Id`) was
    /// first used for another request; nothing was stored. The first request's answer is
    /// not returned: the caller sent different text under a key it already used.
    #[error("this key was already used for a different request; send a new key for a new message (nothing was stored)")]
    IdempotencyKeyReused,
    /// The store failed.
    #[error(transparent)]
    Db(DbError),
}

impl From<DbError> for OrchestratorError {
    fn from(err: DbError) -> Self {
        match err {
            DbError::NotFound { what } => Self::NotFound(what),
            other => Self::Db(other),
        }
    }
}
