//! [`DbError`]: the one error type of the store, and [`Cause`], what went wrong beneath
//! it, which keeps the underlying error as its `source` so the chain survives.

use std::error::Error as StdError;
use std::fmt;

use thiserror::Error;

/// What went wrong beneath a [`DbError::Unavailable`], [`DbError::Retryable`] or
/// [`DbError::Other`]: a message for people (shown by `Display`, as before the error was
/// kept) and, when there is one, the underlying error (`tokio_postgres::Error`, a pool
/// error, a JSON error…) as [`std::error::Error::source`], so a caller can walk the chain
/// or downcast it.
#[derive(Debug)]
pub struct Cause {
    message: String,
    source: Option<Box<dyn StdError + Send + Sync>>,
}

impl Cause {
    /// `context: source`, keeping `source`.
    pub fn new(context: &str, source: impl StdError + Send + Sync + 'static) -> Self {
        Self { message: format!("{context}: {source}"), source: Some(Box::new(source)) }
    }

    /// The error's own text, keeping the error.
    pub fn of(source: impl StdError + Send + Sync + 'static) -> Self {
        Self { message: source.to_string(), source: Some(Box::new(source)) }
    }

    /// A message with no underlying error.
    pub fn msg(message: impl Into<String>) -> Self {
        Self { message: message.into(), source: None }
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl StdError for Cause {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn StdError + 'static))
    }
}

impl From<String> for Cause {
    fn from(message: String) -> Self {
        Self::msg(message)
    }
}

impl From<&str> for Cause {
    fn from(message: &str) -> Self {
        Self::msg(message)
    }
}

/// An error from the store.
///
/// Which variant to branch on:
/// - [`DbError::NotFound`]: the row asked for does not exist (map to HTTP 404).
/// - [`DbError::Conflict`]: a named constraint refused the write (unique, foreign key,
///   check); `constraint` is the constraint's name from the migrations; compare it with
///   the names in [`crate::constraint`], e.g. [`crate::constraint::TURN_ONE_RUNNING`].
/// - [`DbError::ActiveSession`]: the session to delete is its conversation's active one
///   (a rule the store checks itself: no constraint expresses it; map to HTTP 409).
/// - [`DbError::Unavailable`]: the database could not be reached or the pool timed out;
///   retry later (map to HTTP 503).
/// - [`DbError::Retryable`]: the transaction lost a deadlock or serialization race and
///   was rolled back; running it again is safe.
/// - [`DbError::Other`]: anything else; a bug or an unexpected server error.
#[derive(Debug, Error)]
pub enum DbError {
    /// The row does not exist.
    #[error("{what} not found")]
    NotFound {
        /// What was looked for, e.g. `"conversation"`.
        what: &'static str,
    },
    /// A constraint refused the write.
    #[error("conflict on constraint {constraint}")]
    Conflict {
        /// The constraint's name as declared in the migrations.
        constraint: String,
    },
    /// The session is its conversation's active session, which cannot be deleted (reset
    /// the conversation first).
    #[error("the session is its conversation's active session")]
    ActiveSession,
    /// The database could not be reached.
    #[error("database unavailable: {0}")]
    Unavailable(#[source] Cause),
    /// The transaction was rolled back to break a deadlock or a serialization conflict
    /// (SQLSTATE 40P01 / 40001); it may simply be run again.
    #[error("transaction rolled back by a concurrent one: {0}")]
    Retryable(#[source] Cause),
    /// Any other database error.
    #[error("database error: {0}")]
    Other(#[source] Cause),
}

impl DbError {
    /// Shorthand for [`DbError::NotFound`].
    #[must_use]
    pub fn not_found(what: &'static str) -> Self {
        Self::NotFound { what }
    }

    /// True when this is a conflict on the named constraint (one of [`crate::constraint`]).
    #[must_use]
    pub fn is_conflict_on(&self, name: &str) -> bool {
        matches!(self, Self::Conflict { constraint } if constraint == name)
    }
}

impl From<tokio_postgres::Error> for DbError {
    fn from(err: tokio_postgres::Error) -> Self {
        use tokio_postgres::error::SqlState;
        if let Some(db) = err.as_db_error() {
            let code = db.code();
            if *code == SqlState::UNIQUE_VIOLATION
                || *code == SqlState::FOREIGN_KEY_VIOLATION
                || *code == SqlState::CHECK_VIOLATION
                || *code == SqlState::EXCLUSION_VIOLATION
            {
                return Self::Conflict { constraint: db.constraint().unwrap_or("unknown").to_owned() };
            }
            if *code == SqlState::T_R_DEADLOCK_DETECTED || *code == SqlState::T_R_SERIALIZATION_FAILURE {
                return Self::Retryable(Cause { message: db.message().to_owned(), source: Some(Box::new(err)) });
            }
            if *code == SqlState::ADMIN_SHUTDOWN
                || *code == SqlState::CRASH_SHUTDOWN
                || *code == SqlState::CANNOT_CONNECT_NOW
                || *code == SqlState::TOO_MANY_CONNECTIONS
            {
                return Self::Unavailable(Cause { message: db.message().to_owned(), source: Some(Box::new(err)) });
            }
            let message = format!("{}: {}", db.code().code(), db.message());
            return Self::Other(Cause { message, source: Some(Box::new(err)) });
        }
        if err.is_closed() || std::error::Error::source(&err).is_some_and(|s| s.is::<std::io::Error>()) {
            return Self::Unavailable(Cause::of(err));
        }
        Self::Other(Cause::of(err))
    }
}

impl From<deadpool_postgres::PoolError> for DbError {
    fn from(err: deadpool_postgres::PoolError) -> Self {
        match err {
            deadpool_postgres::PoolError::Backend(e) => {
                let mapped = Self::from(e);
                match mapped {
                    // Failing to open a connection is an outage, whatever the cause.
                    Self::Other(msg) => Self::Unavailable(msg),
                    other => other,
                }
            }
            other => Self::Unavailable(Cause::of(other)),
        }
    }
}
