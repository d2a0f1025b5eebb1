//! The vocabulary enums ([`TurnStatus`], [`Role`], [`EventKind`], [`ReplyMode`],
//! [`Transition`]) against the schema and the JSON wire format: the same spellings
//! everywhere, and an unknown stored value read as an error, never a panic.

use parley_db::DbError;
use parley_db::conversation::ReplyMode;
use parley_db::event::EventKind;
use parley_db::message::{self, Role};
use parley_db::session::Transition;
use parley_db::turn::TurnStatus;
use parley_test_support::TestDb;
use serde_json::json;
use strum::IntoEnumIterator;

/// The quoted values of a check constraint's `in (…)` list, sorted.
async fn values_allowed_by(db: &TestDb, constraint: &str) -> Vec<String> {
    let client = db.pool.get().await.expect("client");
    let definition: String = client
        .query_one("select pg_get_constraintdef(oid) from pg_constraint where conname = $1", &[&constraint])
        .await
        .unwrap_or_else(|e| panic!("constraint {constraint}: {e}"))
        .get(0);
    let mut values: Vec<String> = definition.split('\'').skip(1).step_by(2).map(str::to_owned).collect();
    values.sort();
    assert!(!values.is_empty(), "no values in {definition}");
    values
}

fn spelled<T: AsRef<str>>(all: impl Iterator<Item = T>) -> Vec<String> {
    let mut values: Vec<String> = all.map(|v| v.as_ref().to_owned()).collect();
    values.sort();
    values
}

#[tokio::test]
async fn every_vocabulary_enum_spells_what_its_check_constraint_allows() {
    let db = TestDb::new().await;
    assert_eq!(values_allowed_by(&db, "turn_status_check").await, spelled(TurnStatus::iter()));
    assert_eq!(values_allowed_by(&db, "message_role_check").await, spelled(Role::iter()));
    assert_eq!(values_allowed_by(&db, "conversation_reply_mode_check").await, spelled(ReplyMode::iter()));
    // `session-deleted` is allowed by the schema since V1 but no code writes it.
    let mut reasons = values_allowed_by(&db, "session_transition_reason_check").await;
    reasons.retain(|r| r != "session-deleted");
    assert_eq!(reasons, spelled(Transition::iter()));
}

#[test]
fn the_json_wire_format_and_the_stored_text_are_the_same_spelling() {
    fn check<T>(all: impl Iterator<Item = T>)
    where
        T: AsRef<str> + std::fmt::Display + serde::Serialize + std::str::FromStr + PartialEq + std::fmt::Debug,
    {
        for value in all {
            let text = value.as_ref().to_owned();
            assert_eq!(serde_json::to_value(&value).expect("json"), json!(text), "{value:?}");
            assert_eq!(value.to_string(), text, "{value:?}");
            assert!(text.parse::<T>().ok().as_ref() == Some(&value), "{text} does not parse back");
        }
    }
    check(TurnStatus::iter());
    check(Role::iter());
    check(EventKind::iter());
    check(ReplyMode::iter());
    check(Transition::iter());
    assert_eq!(TurnStatus::Interrupted.as_ref(), "interrupted");
    assert_eq!(EventKind::TurnStarted.as_ref(), "turn_started");
    assert_eq!(Transition::StaleSession.as_ref(), "stale-session");
    assert!("bogus".parse::<TurnStatus>().is_err());
    assert!("Turn_Started".parse::<EventKind>().is_err());
}

/// A row written with a value the enum does not know (by a newer Parley, or by hand
/// once the constraint is gone) is read as an error naming the column.
#[tokio::test]
async fn an_unknown_stored_value_is_an_error_not_a_panic() {
    let db = TestDb::new().await;
    let client = db.pool.get().await.expect("client");
    let conversation = crate::web_conversation(&client, "unknown role").await;
    client.batch_execute("alter table message drop constraint message_role_check").await.expect("drop check");
    client
        .execute("insert into message (conversation_id, role, content) values ($1, 'robot', 'beep')", &[&conversation])
        .await
        .expect("message");
    let err = message::list(&client, conversation, 0, 10).await.expect_err("an unknown role");
    assert!(
        matches!(&err, DbError::Other(m) if m.to_string().contains("role") && m.to_string().contains("robot")),
        "{err:?}"
    );
}
