//! The store against real PostgreSQL, under concurrency: a conversation deleted while
//! its turn still writes; every listing read from an index, a page at a time
//! (`listings`); the turn queue's enqueue, claim and lease sweep (`queue`); the
//! constraint names callers branch on (`constraint`); the history a rebuilt prompt reads
//! (`history`); a session's usage totals kept as replies are stored (`usage`); the
//! vocabulary enums against the schema (`vocabulary`).

use std::time::Duration;

use chrono::Utc;
use parley_db::conversation::{self, NewConversation};
use parley_db::event::{self, Event};
use parley_test_support::TestDb;
use serde_json::json;
use uuid::Uuid;

#[path = "store/constraint.rs"]
mod constraint;
#[path = "store/history.rs"]
mod history;
#[path = "store/listings.rs"]
mod listings;
#[path = "store/migrations.rs"]
mod migrations;
#[path = "store/queue.rs"]
mod queue;
#[path = "store/usage.rs"]
mod usage;
#[path = "store/vocabulary.rs"]
mod vocabulary;

/// A new web conversation owned by `local`, answered by `demo`; returns its id.
async fn web_conversation(client: &impl parley_db::GenericClient, title: &str) -> Uuid {
    conversation::create(client, &NewConversation::web("local", title, "demo"))
        .await
        .expect("conversation")
        .conversation_id
}

/// A conversation with one user message and its running turn; returns their ids.
async fn conversation_with_a_running_turn(db: &TestDb) -> (Uuid, Uuid) {
    let client = db.pool.get().await.expect("client");
    let conversation = web_conversation(&client, "deleted mid-turn").await;
    let turn_id = Uuid::new_v4();
    client
        .execute(
            "with m as (insert into message (conversation_id, role, content) values ($1, 'user', 'hi') \
                        returning message_id) \
             insert into turn (turn_id, conversation_id, user_message_id, status, attempt) \
             select $2, $1, message_id, 'running', 1 from m",
            &[&conversation, &turn_id],
        )
        .await
        .expect("turn");
    (conversation, turn_id)
}

/// Waits until a statement containing `fragment` waits for a lock.
async fn wait_until_blocked(db: &TestDb, fragment: &str) {
    let client = db.pool.get().await.expect("client");
    for _ in 0..200 {
        let blocked: i64 = client
            .query_one(
                "select count(*) from pg_stat_activity where datname = current_database() \
                 and wait_event_type = 'Lock' and query like $1",
                &[&format!("%{fragment}%")],
            )
            .await
            .expect("pg_stat_activity")
            .get(0);
        if blocked > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no statement with `{fragment}` ever waited for a lock");
}

/// The delete of a conversation waits (here for a lock held on its turn, as it would
/// for a finishing turn) while the turn flushes reply events. Before, the flush saw the
/// not-yet-deleted conversation and committed at once, after the delete's snapshot: its
/// events stayed in `event` forever. Now the flush waits for the delete, then finds the
/// conversation gone and stores nothing.
#[tokio::test]
async fn events_flushed_while_a_delete_waits_do_not_outlive_the_conversation() {
    let db = TestDb::new().await;
    let (conversation_id, turn_id) = conversation_with_a_running_turn(&db).await;

    let mut holder = db.pool.get().await.expect("client");
    let hold = holder.transaction().await.expect("tx");
    hold.execute("select 1 from turn where turn_id = $1 for update", &[&turn_id]).await.expect("lock");

    let deleting = {
        let pool = db.pool.clone();
        tokio::spawn(async move {
            let mut client = pool.get().await.expect("client");
            let tx = client.transaction().await.expect("tx");
            conversation::delete(&tx, conversation_id).await.expect("delete");
            tx.commit().await.expect("commit");
        })
    };
    wait_until_blocked(&db, "delete from conversation").await;

    let flushing = {
        let pool = db.pool.clone();
        tokio::spawn(async move {
            let client = pool.get().await.expect("client");
            let text = Event {
                conversation_id,
                seq: 1_000_000,
                turn_id: Some(turn_id),
                kind: event::EventKind::Text,
                data: json!({ "turn_id": turn_id, "text": "the reply, in part" }),
                created_at: Utc::now(),
            };
            event::insert_batch(&client, &[text]).await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    hold.commit().await.expect("release");

    tokio::time::timeout(Duration::from_secs(10), deleting).await.expect("delete finishes").expect("delete task");
    let flushed = tokio::time::timeout(Duration::from_secs(10), flushing).await.expect("flush finishes");
    flushed.expect("flush task").expect("a flush into a deleted conversation is not an error");
    let client = db.pool.get().await.expect("client");
    let left: i64 = client
        .query_one("select count(*) from event where conversation_id = $1", &[&conversation_id])
        .await
        .expect("count")
        .get(0);
    assert_eq!(left, 0, "events of the deleted conversation remain");
}
