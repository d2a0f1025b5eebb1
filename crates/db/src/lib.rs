//! Parley's PostgreSQL store.
//!
//! PostgreSQL is the source of truth for every conversation
//! (`docs/architecture.md#database-is-the-truth`). This crate owns the connection pool
//! ([`connect`]), the embedded migrations ([`migrate`]) and one module per table or
//! aggregate. It knows nothing of HTTP or assistants.
//!
//! Functions are free functions over `&impl GenericClient`, so the same call works on
//! a pooled client and inside a transaction. Errors are [`DbError`]: callers branch on
//! [`DbError::NotFound`] and [`DbError::Conflict`]; [`DbError::Unavailable`] means the
//! database could not be reached and the request may be retried later.

#![forbid(unsafe_code)]

/// Declares one of the schema's text vocabularies (a `text` column with a `check`
/// constraint listing its values) as an enum spelled the same way everywhere: in the
/// column, in JSON (serde) and by `strum` (`str::parse` reads it, `as_ref`/`Display`/
/// `Into<&'static str>` write it, `iter()` lists every value in declaration order).
/// `$case` is the spelling, e.g. `"lowercase"`, `"snake_case"`, `"kebab-case"`; it is
/// taken as a `tt`, not a `literal`: utoipa's derive does not read a `rename_all` handed
/// over as a `literal` fragment, and the document then spelled the values in Rust's case.
macro_rules! vocabulary {
    ($(#[$meta:meta])* $vis:vis enum $name:ident ($case:tt) { $($body:tt)* }) => {
        $(#[$meta])*
        #[derive(
            Debug,
            Clone,
            Copy,
            PartialEq,
            Eq,
            Hash,
            serde::Serialize,
            serde::Deserialize,
            strum::EnumString,
            strum::AsRefStr,
            strum::IntoStaticStr,
            strum::Display,
            strum::EnumIter,
        )]
        #[serde(rename_all = $case)]
        #[strum(serialize_all = $case)]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
        $vis enum $name { $($body)* }
    };
}

/// Implements `TryFrom<&Row>` for a struct read from a row: a bare `field` is read from
/// the column of the same name, `field: expr` is computed by `expr`, which sees the row
/// under the name given first (`row => Type { … }`). The impl names `DbError` and
/// `DbResult` as the calling module imports them, as a hand-written one would.
macro_rules! from_row {
    ($row:ident => $ty:ty { $($field:ident $(: $value:expr)?),* $(,)? }) => {
        impl TryFrom<&tokio_postgres::Row> for $ty {
            type Error = DbError;

            fn try_from($row: &tokio_postgres::Row) -> DbResult<Self> {
                Ok(Self { $($field: from_row!(@value $row, $field $(, $value)?)),* })
            }
        }
    };
    (@value $row:ident, $field:ident) => { $row.try_get(stringify!($field))? };
    (@value $row:ident, $field:ident, $value:expr) => { $value };
}

pub mod api_token;
pub mod constraint;
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
pub mod transcript;
pub mod turn;

/// A connection taken from a [`Pool`] (returned to it when dropped).
pub use deadpool_postgres::Object as PooledClient;
pub use deadpool_postgres::{GenericClient, Pool, Transaction};
pub use error::{Cause, DbError};
pub use pool::{DbConfig, check, connect, ensure_database};

/// The result type of every store function.
pub type DbResult<T> = Result<T, DbError>;

/// Reads a text column holding a value of one of the store's vocabulary enums
/// ([`turn::TurnStatus`], [`message::Role`], [`event::EventKind`], …), each parsed by
/// the `strum` spelling that matches the column's `check` constraint.
///
/// # Errors
/// [`DbError::Other`] naming the column and the value when the enum does not know the
/// value (a row written by a newer Parley, or by hand), never a panic.
pub(crate) fn text_enum<T: std::str::FromStr>(row: &tokio_postgres::Row, column: &str) -> DbResult<T> {
    let text: &str = row.try_get(column)?;
    text.parse().map_err(|_| DbError::Other(format!("{column}: unknown value {text:?}").into()))
}

/// [`text_enum`] for a column that may be null.
///
/// # Errors
/// As [`text_enum`].
pub(crate) fn text_enum_opt<T: std::str::FromStr>(row: &tokio_postgres::Row, column: &str) -> DbResult<Option<T>> {
    let text: Option<&str> = row.try_get(column)?;
    text.map(|text| text.parse().map_err(|_| DbError::Other(format!("{column}: unknown value {text:?}").into())))
        .transpose()
}

/// The first page of a keyset-paged list starts after a key that sorts before (or, for
/// newest-first lists, after) every row; these are its instants: 0001-01-01 and
/// 9999-12-31, both inside PostgreSQL's `timestamptz` range, unlike chrono's own bounds.
pub(crate) mod page {
    use chrono::{DateTime, Utc};

    /// An instant before any stored timestamp.
    pub fn before_any_time() -> DateTime<Utc> {
        DateTime::from_timestamp(-62_135_596_800, 0).unwrap_or(DateTime::UNIX_EPOCH)
    }

    /// An instant after any stored timestamp.
    pub fn after_any_time() -> DateTime<Utc> {
        DateTime::from_timestamp(253_402_300_799, 0).unwrap_or(DateTime::<Utc>::MAX_UTC)
    }
}
