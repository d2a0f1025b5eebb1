//! The turn queue's SQL, called directly: [`ingest::enqueue`] stores a message with its
//! queued turn; [`turn::claim`] hands out one conversation's turns oldest first, one at a
//! time, never the same turn to two claimers; [`turn::requeue_expired`] requeues the
//! turns whose lease expired; `attempt` counts the claims.
//!
//! Statuses are read back with SQL rather than from the returned rows, so these tests
//! check the stored state whatever type the rows carry it in.

use std::collections::HashSet;
use std::time::Duration;

use parley_db::conversation;
use parley_db::ingest::{self, Enqueue, Enqueued};
use parley_db::turn::{self, TurnStatus};
use parley_db::{DbError, GenericClient};
use parley_test_support::TestDb;
use serde_json::json;
use uuid::Uuid;

/// A long lease: nothing expires during a test unless it asks for it.
const LEASE: Duration = Duration::from_secs(600);

/// A new web conversation owned by `local`; returns its id.
async fn new_conversation(client: &impl GenericClient) -> Uuid {
    crate::web_conversation(client, "queue").await
}

/// What [`enqueue`] is given for `text` in `conversation_id`, with no owner check, no
/// queue limit and no idempotency key.
fn message<'a>(conversation_id: Uuid, text: &'a str, metadata: &'a serde_json::Value) -> Enqueue<'a> {
    Enqueue {
        conversation_id,
        owner: None,
        turn_id: Uuid::new_v4(),
        content: text,
        metadata,
        max_queued: 0,
        idempotency_key: None,
        request_hash: None,
    }
}

/// Enqueues `text` in `conversation_id`; returns the queued turn's id.
async fn enqueue(client: &impl GenericClient, conversation_id: Uuid, text: &str) -> Uuid {
    let metadata = json!({});
    let e = message(conversation_id, text, &metadata);
    let enqueued = ingest::enqueue(client, &e).await.expect("enqueue");
    assert!(matches!(enqueued, Enqueued::Stored { .. }), "{text:?} was not stored: {enqueued:?}");
    e.turn_id
}

/// Claims the next turn for `worker`; returns its id and attempt.
async fn claim(client: &impl GenericClient, worker: &str, lease: Duration) -> Option<(Uuid, i32)> {
    let claimed = turn::claim(client, worker, lease, Uuid::new_v4()).await.expect("claim");
    claimed.map(|c| (c.turn.turn_id, c.turn.attempt))
}

/// The stored status, attempt and worker of a turn.
async fn stored(client: &impl GenericClient, turn_id: Uuid) -> (String, i32, Option<String>) {
    let row = client
        .query_one("select status, attempt, worker_id from turn where turn_id = $1", &[&turn_id])
        .await
        .expect("turn row");
    (row.get(0), row.get(1), row.get(2))
}

/// The text of the user message a turn answers.
/// The worker recorded as holding the conversation's warm process.
async fn warm_holder(client: &impl GenericClient, conversation_id: Uuid) -> Option<String> {
    client
        .query_one("select warm_worker_id from conversation where conversation_id = $1", &[&conversation_id])
        .await
        .expect("conversation")
        .get(0)
}

async fn question_of(client: &impl GenericClient, turn_id: Uuid) -> String {
    client
        .query_one(
            "select m.content from turn t join message m on m.message_id = t.user_message_id where t.turn_id = $1",
            &[&turn_id],
        )
        .await
        .expect("message of turn")
        .get(0)
}

#[tokio::test]
async fn claim_hands_out_a_conversations_turns_oldest_first_one_at_a_time() {
    let db = TestDb::new().await;
    let client = db.pool.get().await.expect("client");
    let conversation_id = new_conversation(&client).await;
    let turns = [
        enqueue(&client, conversation_id, "first").await,
        enqueue(&client, conversation_id, "second").await,
        enqueue(&client, conversation_id, "third").await,
    ];

    for (i, expected) in turns.iter().enumerate() {
        let (claimed, attempt) = claim(&client, "w1", LEASE).await.expect("a queued turn is claimed");
        assert_eq!(claimed, *expected, "claim {i} took {:?}", question_of(&client, claimed).await);
        assert_eq!(attempt, 1);
        assert_eq!(stored(&client, claimed).await, ("running".to_owned(), 1, Some("w1".to_owned())));
        assert_eq!(
            claim(&client, "w2", LEASE).await,
            None,
            "a second turn of the conversation was claimed while one ran"
        );
        assert!(turn::finish(&client, claimed, TurnStatus::Completed, None).await.expect("finish"));
    }
    assert_eq!(claim(&client, "w1", LEASE).await, None, "nothing is left to claim");
}

#[tokio::test]
async fn conversations_run_side_by_side_but_each_runs_one_turn() {
    let db = TestDb::new().await;
    let client = db.pool.get().await.expect("client");
    let a = new_conversation(&client).await;
    let b = new_conversation(&client).await;
    let a1 = enqueue(&client, a, "a1").await;
    let a2 = enqueue(&client, a, "a2").await;
    let b1 = enqueue(&client, b, "b1").await;

    let first = claim(&client, "w1", LEASE).await.expect("claim").0;
    let second = claim(&client, "w2", LEASE).await.expect("claim").0;
    assert_eq!(HashSet::from([first, second]), HashSet::from([a1, b1]), "each conversation's oldest turn runs");
    assert_eq!(claim(&client, "w3", LEASE).await, None, "a2 was claimed while a1 ran");
    let running: i64 = client
        .query_one("select count(*) from turn where status = 'running' and conversation_id = $1", &[&a])
        .await
        .expect("count")
        .get(0);
    assert_eq!(running, 1);

    // The database itself refuses a second running turn in a conversation.
    let err = client
        .execute("update turn set status = 'running' where turn_id = $1", &[&a2])
        .await
        .map_err(DbError::from)
        .expect_err("two running turns in one conversation");
    assert!(err.is_conflict_on(parley_db::constraint::TURN_ONE_RUNNING), "{err}");

    assert!(turn::finish(&client, a1, TurnStatus::Failed, Some("boom")).await.expect("finish"));
    assert_eq!(claim(&client, "w3", LEASE).await.map(|c| c.0), Some(a2), "a2 runs once a1 is done");
}

#[tokio::test]
async fn a_paused_conversation_is_not_claimed_until_resumed() {
    let db = TestDb::new().await;
    let client = db.pool.get().await.expect("client");
    let conversation_id = new_conversation(&client).await;
    let queued = enqueue(&client, conversation_id, "later").await;
    assert!(conversation::set_paused(&client, conversation_id, true).await.expect("pause"));
    assert_eq!(claim(&client, "w1", LEASE).await, None);
    assert!(conversation::set_paused(&client, conversation_id, false).await.expect("resume"));
    assert_eq!(claim(&client, "w1", LEASE).await.map(|c| c.0), Some(queued));
}

/// `for update skip locked`: a claimer passes over a queued turn whose row another
/// transaction holds, instead of waiting for it.
#[tokio::test]
async fn claim_skips_a_locked_turn_instead_of_waiting() {
    let db = TestDb::new().await;
    let client = db.pool.get().await.expect("client");
    let a = new_conversation(&client).await;
    let b = new_conversation(&client).await;
    let a1 = enqueue(&client, a, "a1").await;
    let b1 = enqueue(&client, b, "b1").await;

    let mut holder = db.pool.get().await.expect("client");
    let hold = holder.transaction().await.expect("tx");
    hold.execute("select 1 from turn where turn_id = $1 for update", &[&a1]).await.expect("lock a1");

    let claimed = tokio::time::timeout(Duration::from_secs(5), claim(&client, "w1", LEASE))
        .await
        .expect("claim waited for a locked row");
    assert_eq!(claimed.map(|c| c.0), Some(b1), "the unlocked turn is claimed");
    let nothing = tokio::time::timeout(Duration::from_secs(5), claim(&client, "w2", LEASE))
        .await
        .expect("claim waited for a locked row");
    assert_eq!(nothing, None, "the locked turn is skipped, not claimed");

    hold.rollback().await.expect("release");
    assert_eq!(claim(&client, "w2", LEASE).await.map(|c| c.0), Some(a1), "released, it is claimed");
}

/// Claimers racing on many connections: every turn is claimed exactly once, and never
/// two of one conversation at a time.
#[tokio::test]
async fn concurrent_claimers_never_take_the_same_turn() {
    const CONVERSATIONS: usize = 12;
    const CLAIMERS: usize = 4;
    let db = TestDb::new().await;
    let mut expected = HashSet::new();
    {
        let client = db.pool.get().await.expect("client");
        for _ in 0..CONVERSATIONS {
            let conversation_id = new_conversation(&client).await;
            expected.insert(enqueue(&client, conversation_id, "one").await);
            expected.insert(enqueue(&client, conversation_id, "two").await);
        }
    }

    let start = std::sync::Arc::new(tokio::sync::Barrier::new(CLAIMERS));
    let claimers: Vec<_> = (0..CLAIMERS)
        .map(|i| {
            let (pool, start) = (db.pool.clone(), start.clone());
            tokio::spawn(async move {
                let client = pool.get().await.expect("client");
                let worker = format!("w{i}");
                start.wait().await;
                let mut claimed = Vec::new();
                // Each claimer finishes what it claims, so the second turns become
                // claimable; it stops after a few empty claims in a row.
                let mut empty = 0;
                while empty < 20 {
                    match claim(&client, &worker, LEASE).await {
                        Some((turn_id, attempt)) => {
                            empty = 0;
                            assert_eq!(attempt, 1, "{turn_id} was claimed before");
                            claimed.push(turn_id);
                            assert!(
                                turn::finish(&client, turn_id, TurnStatus::Completed, None).await.expect("finish"),
                                "{turn_id} was no longer running for its claimer"
                            );
                        }
                        None => {
                            empty += 1;
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                }
                claimed
            })
        })
        .collect();

    let mut all = Vec::new();
    for claimer in claimers {
        all.extend(claimer.await.expect("claimer"));
    }
    let unique: HashSet<Uuid> = all.iter().copied().collect();
    assert_eq!(unique.len(), all.len(), "a turn was claimed twice: {all:?}");
    assert_eq!(unique, expected, "every turn is claimed once");
}

#[tokio::test]
async fn an_expired_lease_is_taken_back_and_the_turn_runs_again_until_max_attempts() {
    const MAX_ATTEMPTS: i32 = 2;
    let db = TestDb::new().await;
    let client = db.pool.get().await.expect("client");
    let conversation_id = new_conversation(&client).await;
    let turn_id = enqueue(&client, conversation_id, "flaky worker").await;
    let lease = Duration::from_millis(1);

    // A live lease is left alone.
    assert_eq!(claim(&client, "w1", LEASE).await, Some((turn_id, 1)));
    assert!(turn::requeue_expired(&client, MAX_ATTEMPTS).await.expect("sweep").is_empty());
    assert_eq!(stored(&client, turn_id).await.0, "running");
    // Its worker never renews it: expired, the turn goes back to the queue.
    client
        .execute("update turn set lease_until = now() - interval '1 second' where turn_id = $1", &[&turn_id])
        .await
        .expect("expire");
    let turns = turn::requeue_expired(&client, MAX_ATTEMPTS).await.expect("sweep");
    assert_eq!(turns.len(), 1);
    assert_eq!((turns[0].turn_id, turns[0].conversation_id, turns[0].attempt), (turn_id, conversation_id, 1));
    assert_eq!(stored(&client, turn_id).await, ("queued".to_owned(), 1, None));
    assert!(
        matches!(turn::extend_lease(&client, turn_id, "w1", LEASE).await.expect("extend"), turn::LeaseState::Lost),
        "the old worker still holds the lease"
    );
    assert!(
        !turn::finish(&client, turn_id, TurnStatus::Completed, None).await.expect("finish"),
        "the old worker finished a turn requeued from under it"
    );

    // Claimed again: the second attempt, whose lease (1 ms) expires at once.
    assert_eq!(claim(&client, "w2", lease).await, Some((turn_id, 2)));
    tokio::time::sleep(Duration::from_millis(20)).await;
    let turns = turn::requeue_expired(&client, MAX_ATTEMPTS).await.expect("sweep");
    assert_eq!(turns.iter().map(|s| (s.turn_id, s.attempt)).collect::<Vec<_>>(), [(turn_id, 2)]);
    // At max_attempts it is interrupted, not requeued.
    let row = client
        .query_one(
            "select status, error, finished_at is not null, lease_until from turn where turn_id = $1",
            &[&turn_id],
        )
        .await
        .expect("turn");
    assert_eq!(row.get::<_, String>(0), "interrupted");
    assert!(row.get::<_, Option<String>>(1).is_some_and(|e| e.starts_with("interrupted")));
    assert!(row.get::<_, bool>(2), "finished_at is set");
    assert_eq!(row.get::<_, Option<chrono::DateTime<chrono::Utc>>>(3), None);
    assert_eq!(claim(&client, "w3", LEASE).await, None, "an interrupted turn is not claimed");
}

#[tokio::test]
async fn attempts_count_claims_and_an_unclaim_gives_one_back() {
    let db = TestDb::new().await;
    let client = db.pool.get().await.expect("client");
    let conversation_id = new_conversation(&client).await;
    let turn_id = enqueue(&client, conversation_id, "again").await;
    assert_eq!(stored(&client, turn_id).await, ("queued".to_owned(), 0, None));

    assert_eq!(claim(&client, "w1", LEASE).await, Some((turn_id, 1)));
    assert!(turn::requeue(&client, turn_id).await.expect("requeue"), "a shutdown puts it back");
    assert_eq!(stored(&client, turn_id).await, ("queued".to_owned(), 1, None));
    assert_eq!(claim(&client, "w1", LEASE).await, Some((turn_id, 2)));
    assert!(turn::unclaim(&client, turn_id).await.expect("unclaim"), "never started: not an attempt");
    assert_eq!(stored(&client, turn_id).await, ("queued".to_owned(), 1, None));
    assert_eq!(claim(&client, "w2", LEASE).await, Some((turn_id, 2)));
    assert!(!turn::requeue(&client, Uuid::new_v4()).await.expect("requeue"), "an unknown turn is not requeued");

    // At start-up a worker requeues what its previous incarnation left running.
    let turns = turn::requeue_owned(&client, "w2").await.expect("requeue_owned");
    assert_eq!(turns.iter().map(|s| (s.turn_id, s.attempt)).collect::<Vec<_>>(), [(turn_id, 2)]);
    assert_eq!(stored(&client, turn_id).await, ("queued".to_owned(), 2, None));
}

/// The claim takes the conversation's run lock on the claiming connection; a claim on
/// another connection while it is held reports that it did not get it.
#[tokio::test]
async fn the_claiming_connection_takes_the_run_lock() {
    let db = TestDb::new().await;
    let first = db.pool.get().await.expect("client");
    let second = db.pool.get().await.expect("client");
    let conversation_id = new_conversation(&first).await;
    let t1 = enqueue(&first, conversation_id, "one").await;
    let t2 = enqueue(&first, conversation_id, "two").await;

    let claimed = turn::claim(&first, "w1", LEASE, Uuid::new_v4()).await.expect("claim").expect("t1");
    assert_eq!((claimed.turn.turn_id, claimed.run_locked), (t1, true));
    assert_eq!(claimed.conversation.conversation_id, conversation_id);
    assert_eq!(claimed.user_message.content, "one");
    assert!(turn::finish(&second, t1, TurnStatus::Completed, None).await.expect("finish"));

    // The first connection still holds the lock (its run's processes are still stopping).
    let claimed = turn::claim(&second, "w2", LEASE, Uuid::new_v4()).await.expect("claim").expect("t2");
    assert_eq!((claimed.turn.turn_id, claimed.run_locked), (t2, false));
    let lock = parley_db::run_lock::RunLock::claimed(&db.pool, first, conversation_id, true);
    lock.release().await;
    let mut retry = parley_db::run_lock::RunLock::claimed(&db.pool, second, conversation_id, false);
    assert!(retry.try_acquire().await.expect("try_acquire"), "released, the lock is free");
    retry.release().await;
}

#[tokio::test]
async fn enqueue_stores_the_message_and_its_turn_or_nothing() {
    let db = TestDb::new().await;
    let client = db.pool.get().await.expect("client");
    let conversation_id = new_conversation(&client).await;
    let metadata = json!({ "source": "test" });
    let count = |sql: &'static str| {
        let client = &client;
        async move { client.query_one(sql, &[&conversation_id]).await.expect("count").get::<_, i64>(0) }
    };
    let messages = "select count(*) from message where conversation_id = $1";
    let queued = "select count(*) from turn where conversation_id = $1 and status = 'queued'";

    let first = message(conversation_id, "hello", &metadata);
    let Enqueued::Stored { message_id } = ingest::enqueue(&client, &first).await.expect("enqueue") else {
        panic!("not stored")
    };
    let row = client
        .query_one(
            "select m.role, m.content, m.metadata, m.turn_id, t.status, t.user_message_id from message m \
             join turn t on t.turn_id = m.turn_id where m.message_id = $1",
            &[&message_id],
        )
        .await
        .expect("message and turn");
    assert_eq!(row.get::<_, String>(0), "user");
    assert_eq!(row.get::<_, String>(1), "hello");
    assert_eq!(row.get::<_, serde_json::Value>(2), metadata);
    assert_eq!(row.get::<_, Uuid>(3), first.turn_id);
    assert_eq!(row.get::<_, String>(4), "queued");
    assert_eq!(row.get::<_, i64>(5), message_id);

    // Another principal's conversation, and an unknown one, store nothing.
    let foreign = Enqueue { owner: Some("someone-else"), turn_id: Uuid::new_v4(), ..first.clone() };
    assert_eq!(ingest::enqueue(&client, &foreign).await.expect("enqueue"), Enqueued::NotFound);
    let own = Enqueue { owner: Some("local"), turn_id: Uuid::new_v4(), ..first.clone() };
    assert!(matches!(ingest::enqueue(&client, &own).await.expect("enqueue"), Enqueued::Stored { .. }));
    let unknown = Enqueue { conversation_id: Uuid::new_v4(), turn_id: Uuid::new_v4(), ..first.clone() };
    assert_eq!(ingest::enqueue(&client, &unknown).await.expect("enqueue"), Enqueued::NotFound);
    assert_eq!((count(messages).await, count(queued).await), (2, 2));

    // A full queue refuses, storing nothing.
    let full = Enqueue { max_queued: 2, turn_id: Uuid::new_v4(), ..first.clone() };
    assert_eq!(ingest::enqueue(&client, &full).await.expect("enqueue"), Enqueued::QueueFull { queued: 2 });
    let roomy = Enqueue { max_queued: 3, turn_id: Uuid::new_v4(), ..first.clone() };
    assert!(matches!(ingest::enqueue(&client, &roomy).await.expect("enqueue"), Enqueued::Stored { .. }));
    assert_eq!((count(messages).await, count(queued).await), (3, 3));

    // An idempotency key is recorded with the response; its repeat stores nothing.
    let hash = [7u8; 32];
    let keyed = Enqueue {
        turn_id: Uuid::new_v4(),
        idempotency_key: Some(("api", "key-1")),
        request_hash: Some(&hash),
        ..first.clone()
    };
    let Enqueued::Stored { message_id } = ingest::enqueue(&client, &keyed).await.expect("enqueue") else {
        panic!("not stored")
    };
    let recorded = parley_db::inbound_delivery::stored(&client, "api", "key-1").await.expect("stored").expect("key");
    assert_eq!(
        recorded.response,
        Some(json!({ "kind": "turn", "turn_id": keyed.turn_id, "message_id": message_id, "duplicate": false }))
    );
    assert_eq!(recorded.request_hash.as_deref(), Some(&hash[..]));
    let repeat = Enqueue { turn_id: Uuid::new_v4(), ..keyed.clone() };
    let err = ingest::enqueue(&client, &repeat).await.expect_err("a repeated idempotency key is refused");
    assert!(ingest::is_duplicate(&err), "{err}");
    assert_eq!((count(messages).await, count(queued).await), (4, 4));
}

/// A claim that prefers the worker holding a conversation's warm process.
async fn claim_warm(client: &impl GenericClient, worker: &str, window: Duration) -> Option<turn::Claimed> {
    let warm = turn::WarmClaim { assistants: vec!["demo".into()], window };
    turn::claim_warm(client, worker, LEASE, Uuid::new_v4(), &warm).await.expect("claim")
}

async fn complete(client: &impl GenericClient, turn_id: Uuid) {
    client.execute("update turn set status = 'completed' where turn_id = $1", &[&turn_id]).await.expect("complete");
}

#[tokio::test]
async fn a_warm_holder_gets_its_conversations_turns_first_and_a_taker_becomes_the_holder() {
    let db = TestDb::new().await;
    let client = db.pool.get().await.expect("client");
    let conversation_id = new_conversation(&client).await;
    let window = Duration::from_millis(800);

    // The first claim makes its worker the holder; nobody held it before.
    let first = enqueue(&client, conversation_id, "first").await;
    let claimed = claim_warm(&client, "a", window).await.expect("the first turn");
    assert_eq!((claimed.turn.turn_id, claimed.warm_holder), (first, None));
    complete(&client, first).await;

    // Within the window another worker leaves the turn to the holder…
    let second = enqueue(&client, conversation_id, "second").await;
    assert!(claim_warm(&client, "b", window).await.is_none(), "b took a turn held warm by a");
    // …which claims it at once and learns it held the conversation.
    let claimed = claim_warm(&client, "a", window).await.expect("a claims its conversation's turn");
    assert_eq!((claimed.turn.turn_id, claimed.warm_holder.as_deref()), (second, Some("a")));
    complete(&client, second).await;

    // After the window another worker takes it, becomes the holder, and is told who held it.
    let third = enqueue(&client, conversation_id, "third").await;
    tokio::time::sleep(window + Duration::from_millis(100)).await;
    let claimed = claim_warm(&client, "b", window).await.expect("b takes the turn after the window");
    assert_eq!((claimed.turn.turn_id, claimed.warm_holder.as_deref()), (third, Some("a")));
    complete(&client, third).await;
    assert_eq!(warm_holder(&client, conversation_id).await.as_deref(), Some("b"));

    // A plain claim (no warm assistants) neither waits nor changes the holder.
    let fourth = enqueue(&client, conversation_id, "fourth").await;
    assert_eq!(claim(&client, "c", LEASE).await.map(|c| c.0), Some(fourth));
    assert_eq!(warm_holder(&client, conversation_id).await.as_deref(), Some("b"));
}
