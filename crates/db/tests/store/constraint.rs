//! The errors callers branch on: the constraint names ([`parley_db::constraint`]) exist
//! in a migrated database, the store's own rule on sessions has its own error, and a
//! wrapped database error keeps its source.

use parley_db::session::{self, NewSession, SessionSettings, Transition};
use parley_db::{DbError, constraint};
use parley_test_support::TestDb;

#[tokio::test]
async fn every_named_constraint_exists_in_the_migrated_schema() {
    let db = TestDb::new().await;
    let client = db.pool.get().await.expect("client");
    // A conflict names a table constraint (pg_constraint) or, for a unique index that is
    // not a constraint (the partial ones), the index.
    let rows = client
        .query(
            "select conname::text from pg_constraint c join pg_namespace n on n.oid = c.connamespace \
             where n.nspname = 'public' \
             union \
             select i.relname::text from pg_index x join pg_class i on i.oid = x.indexrelid \
             join pg_namespace n on n.oid = i.relnamespace where n.nspname = 'public' and x.indisunique",
            &[],
        )
        .await
        .expect("catalog");
    let names: std::collections::HashSet<String> = rows.iter().map(|r| r.get(0)).collect();
    assert!(names.contains("turn_pkey"), "the catalog query finds constraints: {names:?}");
    let missing: Vec<&str> = constraint::ALL.iter().copied().filter(|c| !names.contains(*c)).collect();
    assert!(missing.is_empty(), "named in parley_db::constraint but not in the schema: {missing:?}");
    assert!(constraint::ALL.contains(&constraint::TURN_ONE_RUNNING), "ALL lists every constant");
}

#[tokio::test]
async fn deleting_the_active_session_is_refused_with_its_own_error() {
    let db = TestDb::new().await;
    let client = db.pool.get().await.expect("client");
    let conversation_id = crate::web_conversation(&client, "sessions").await;
    let settings = SessionSettings::default();
    let new = |parent| NewSession {
        conversation_id,
        assistant: "demo",
        parent_session_id: parent,
        reason: Transition::FirstMessage,
        history_from_message_id: 0,
        settings: &settings,
    };
    let first = session::start(&client, &new(None)).await.expect("session");

    let err = session::start(&client, &new(Some(first.session_id))).await.expect_err("a second active session");
    assert!(err.is_conflict_on(constraint::SESSION_ONE_ACTIVE), "{err}");

    let err = session::delete(&client, first.session_id).await.expect_err("the active session was deleted");
    assert!(matches!(err, DbError::ActiveSession), "{err:?}");
    assert!(session::get(&client, first.session_id).await.is_ok(), "the active session is still there");

    assert!(session::end(&client, first.session_id, Transition::ResetRequested, None).await.expect("end"));
    session::delete(&client, first.session_id).await.expect("an ended session is deleted");
    assert!(matches!(session::get(&client, first.session_id).await, Err(DbError::NotFound { .. })));
}

/// A database error keeps the driver's error as its source: a caller can walk the chain
/// to the SQLSTATE, while the message stays what it was.
#[tokio::test]
async fn a_database_error_keeps_the_drivers_error_as_its_source() {
    let db = TestDb::new().await;
    let client = db.pool.get().await.expect("client");
    let err = DbError::from(client.execute("selec 1", &[]).await.expect_err("a syntax error"));
    assert!(matches!(err, DbError::Other(_)), "{err:?}");
    assert!(err.to_string().starts_with("database error: 42601: "), "{err}");
    let cause = std::error::Error::source(&err).expect("the cause");
    let driver = cause.source().and_then(|e| e.downcast_ref::<tokio_postgres::Error>()).expect("the driver's error");
    assert_eq!(driver.code(), Some(&tokio_postgres::error::SqlState::SYNTAX_ERROR));
}
