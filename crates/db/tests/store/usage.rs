//! A session's usage totals are kept as its replies are stored — by the completing
//! statement and for a partial reply — and read from the session row, so a long
//! session costs no more to read than a short one.

use chrono::Utc;
use parley_db::event::{Event, EventKind};
use parley_db::message::{self, Role};
use parley_db::session::{self, NewSession, SessionSettings, Transition, UsageTotals};
use parley_db::turn::{self, Completion};
use parley_test_support::TestDb;
use serde_json::json;
use uuid::Uuid;

use super::conversation_with_a_running_turn;

/// A running turn claimed by `worker`, in a fresh session; returns (conversation, turn, session).
async fn running_turn_in_a_session(db: &TestDb, worker: &str) -> (Uuid, Uuid, Uuid) {
    let (conversation_id, turn_id) = conversation_with_a_running_turn(db).await;
    let client = db.pool.get().await.expect("client");
    client.execute("update turn set worker_id = $2 where turn_id = $1", &[&turn_id, &worker]).await.expect("claim");
    let settings = SessionSettings::default();
    let s = session::start(
        &client,
        &NewSession {
            conversation_id,
            assistant: "demo",
            parent_session_id: None,
            reason: Transition::FirstMessage,
            history_from_message_id: 0,
            settings: &settings,
        },
    )
    .await
    .expect("session");
    (conversation_id, turn_id, s.session_id)
}

fn completed(conversation_id: Uuid, turn_id: Uuid) -> Event {
    Event {
        conversation_id,
        seq: 10,
        turn_id: Some(turn_id),
        kind: EventKind::TurnCompleted,
        data: json!({}),
        created_at: Utc::now(),
    }
}

#[tokio::test]
async fn a_sessions_usage_totals_add_up_each_stored_reply_and_ignore_replies_without_usage() {
    let db = TestDb::new().await;
    let (conversation_id, turn_id, session_id) = running_turn_in_a_session(&db, "w1").await;
    let client = db.pool.get().await.expect("client");
    assert_eq!(session::usage_totals(&client, session_id).await.expect("totals"), UsageTotals::default());

    // The completing statement adds the reply's usage.
    let meta = json!({ "usage": { "input_tokens": 2095, "output_tokens": 7 }, "cost_usd": 0.5 });
    let final_event = completed(conversation_id, turn_id);
    let completion = Completion {
        turn_id,
        worker_id: "w1",
        conversation_id,
        session_id,
        assistant_session_id: None,
        content: "hello",
        metadata: &meta,
        events: &[],
        final_event: &final_event,
    };
    let stored = turn::complete(&client, &completion).await.expect("complete");
    assert!(stored.is_some(), "the turn was running for w1, so it completes");

    // A partial reply (a failed or cancelled turn) adds its usage too.
    let partial = json!({ "usage": { "input_tokens": 5, "output_tokens": 3 }, "incomplete": true });
    message::insert(&client, conversation_id, Some(turn_id), Role::Assistant, "hel", &partial).await.expect("insert");
    session::add_usage(&client, session_id, &partial).await.expect("add");
    // A reply without usage changes nothing.
    session::add_usage(&client, session_id, &json!({ "incomplete": true })).await.expect("add nothing");

    let totals = session::usage_totals(&client, session_id).await.expect("totals");
    assert_eq!((totals.input_tokens, totals.output_tokens), (2100, 10));
    assert!((totals.cost_usd - 0.5).abs() < 1e-9, "cost {}", totals.cost_usd);

    // A completion that no longer applies (the turn is not running) adds nothing.
    let again =
        turn::complete(&client, &Completion { content: "hello again", ..completion }).await.expect("complete again");
    assert_eq!(again, None);
    assert_eq!(session::usage_totals(&client, session_id).await.expect("totals").input_tokens, 2100);

    let missing = session::usage_totals(&client, Uuid::new_v4()).await;
    assert!(matches!(missing, Err(parley_db::DbError::NotFound { .. })), "{missing:?}");
}

/// Sessions stored before the totals were kept get them from the upgrade: after
/// migrating a generated data set (whose replies carry usage), every session's totals
/// equal the sum over its replies that the read used to compute.
#[tokio::test]
async fn the_upgrade_fills_every_existing_sessions_totals_from_its_replies() {
    use parley_test_support::dataset::{self, Spec};

    let db = TestDb::empty().await;
    parley_db::migrate::run_to(&db.config, 4).await.expect("migrate to V4, the schema the generator writes");
    let mut client = db.pool.get().await.expect("client");
    dataset::generate(&mut client, &Spec::new(30, 10)).await.expect("generate");
    parley_db::migrate::run(&db.config).await.expect("migrate to the latest schema");

    let rows = client
        .query(
            "select s.session_id, s.input_tokens, s.output_tokens, \
                    (select coalesce(sum((m.metadata->'usage'->>'input_tokens')::bigint), 0)::bigint \
                       from message m join turn t on t.turn_id = m.turn_id \
                      where t.session_id = s.session_id and m.role = 'assistant'), \
                    (select coalesce(sum((m.metadata->'usage'->>'output_tokens')::bigint), 0)::bigint \
                       from message m join turn t on t.turn_id = m.turn_id \
                      where t.session_id = s.session_id and m.role = 'assistant') \
             from session s",
            &[],
        )
        .await
        .expect("sessions");
    assert!(rows.len() >= 30, "one session per conversation at least, got {}", rows.len());
    let mut with_usage = 0;
    for r in &rows {
        let (id, input, output, summed_input, summed_output): (Uuid, i64, i64, i64, i64) =
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
        assert_eq!((input, output), (summed_input, summed_output), "session {id}");
        with_usage += usize::from(input > 0);
    }
    assert!(with_usage >= 30, "the generated replies carry usage, so most sessions have totals ({with_usage})");
}
