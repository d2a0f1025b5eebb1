//! [`OrchestratorError`]: what the pipeline's entry points report to surfaces.

use parley_db::DbError;
use thiserror::Error;

/// An error from an orchestrator entry point. Surfaces map it to their protocol:
/// `NotFound` → 404, `InvalidInput` → 400, `Conflict` → 409, `Db(Unavailable)` → 503,
/// anything else → 500.
#[derive(Debug, Error)]
pub enum OrchestratorError {
    /// The conversation (or other named thing) does not exist.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The request cannot be accepted as given; the message says why.
    #[error("{0}")]
    InvalidInput(String),
    /// The conversation's state does not allow the request; the message says why.
    #[error("{0}")]
    Conflict(String),
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
