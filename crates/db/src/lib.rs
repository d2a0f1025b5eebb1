//! Parley's PostgreSQL store.
//!
//! PostgreSQL is the source of truth for every conversation (DESIGN §1). This crate
//! owns the connection pool ([`connect`]), the embedded migrations ([`migrate`]) and
//! one module per table or aggregate. It knows nothing of HTTP or assistants.
//!
//! Functions are free functions over `&impl GenericClient`, so the same call works on
//! a pooled client and inside a transaction. Errors are [`DbError`]: callers branch on
//! [`DbError::NotFound`] and [`DbError::Conflict`]; [`DbError::Unavailable`] means the
//! database could not be reached and the request may be retried later.

#![forbid(unsafe_code)]

pub mod api_token;
pub mod conversation;
mod error;
pub mod event;
pub mod inbound_delivery;
pub mod ingest;
pub mod message;
pub mod migrate;
mod pool;
pub mod retention;
pub mod run_lock;
pub mod session;
pub mod turn;

/// A connection taken from a [`Pool`] (returned to it when dropped).
pub use deadpool_postgres::Object as PooledClient;
pub use deadpool_postgres::{GenericClient, Pool, Transaction};
pub use error::DbError;
pub use pool::{DbConfig, check, connect, ensure_database};

/// The result type of every store function.
pub type DbResult<T> = Result<T, DbError>;
