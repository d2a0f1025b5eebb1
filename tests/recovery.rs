//! Crash and restart recovery, graceful shutdown and two replicas on one database,
//! with the real `parley` binary and real PostgreSQL.

use std::time::Duration;

use futures::StreamExt;
use parley_test_support::process::Parley;
use parley_test_support::{TestDb, sse};
use serde_json::Value;
use uuid::Uuid;

const BIN: &str = env!("CARGO_BIN_EXE_parley");

const FAST: &[&str] = &["--demo-chunk-delay-ms", "10", "--sweep-interval-secs", "1"];

async fn running_turns(db: &TestDb) -> i64 {
    let client = db.pool.get().await.expect("db");
    client.query_one("select count(*) from turn where status = 'running'", &[]).await.expect("count").get(0)
}

#[tokio::test]
async fn kill_9_mid_turn_then_restart_answers_the_message_exactly_once() {
    let db = TestDb::new().await;
    let parley = Parley::start(BIN, &db.url(), "replica-a", FAST);
    let conv = parley.create_conversation().await;
    let first = parley.send(conv, "remember: blue").await;
    parley.wait_turn(first, Duration::from_secs(20)).await;
    let mut events = sse::connect(&parley.url(&format!("/api/conversations/{conv}/events?after=0")), None).await;
    let slow = parley.send(conv, "a slow one [demo:slow]").await;
    sse::read_until(&mut events, Duration::from_secs(20), |m| {
        m.event == "text" && m.data["turn_id"] == slow.to_string()
    })
    .await;
    parley.kill9();
    drop(events);

    // The same replica comes back: it requeues what it owned without waiting for the lease.
    let parley = Parley::start(BIN, &db.url(), "replica-a", FAST);
    let turn = parley.wait_turn(slow, Duration::from_secs(30)).await;
    assert_eq!(turn["status"], "completed", "{turn}");
    assert_eq!(turn["attempt"], 2);
    let messages = parley.messages(conv).await;
    let for_turn: Vec<&Value> = messages.iter().filter(|m| m["turn_id"] == slow.to_string()).collect();
    assert_eq!(for_turn.iter().filter(|m| m["role"] == "user").count(), 1, "the user message was kept");
    assert_eq!(for_turn.iter().filter(|m| m["role"] == "assistant").count(), 1, "answered exactly once");
    // The demo's sessions died with the process: the re-run recovered through the stale path.
    let (_, sessions) = parley.get(&format!("/api/sessions?conversation_id={conv}")).await;
    let reasons: Vec<&str> =
        sessions["sessions"].as_array().expect("list").iter().filter_map(|s| s["transition_reason"].as_str()).collect();
    assert_eq!(reasons, vec!["first-message", "stale-session"]);
    // Followers were told to drop the partial reply of the killed run.
    let mut replay = sse::connect(&parley.url(&format!("/api/conversations/{conv}/events?after=0")), None).await;
    let log = sse::read_until(&mut replay, Duration::from_secs(10), |m| {
        m.event == "turn_completed" && m.data["turn_id"] == slow.to_string()
    })
    .await;
    assert!(log.iter().any(|m| m.event == "turn_interrupted" && m.data["requeued"] == true), "{log:?}");
    assert_eq!(running_turns(&db).await, 0);
}

#[tokio::test]
async fn a_turn_left_by_a_dead_replica_is_taken_over_when_its_lease_expires() {
    let db = TestDb::new().await;
    let a = Parley::start(
        BIN,
        &db.url(),
        "dead-a",
        &["--demo-chunk-delay-ms", "10", "--lease-secs", "2", "--sweep-interval-secs", "1"],
    );
    let b = Parley::start(
        BIN,
        &db.url(),
        "live-b",
        &["--demo-chunk-delay-ms", "10", "--lease-secs", "2", "--sweep-interval-secs", "1"],
    );
    // Find a turn that replica A runs, then kill A for good.
    let conv = a.create_conversation().await;
    let turn = loop {
        let t = a.send(conv, "slow [demo:slow]").await;
        let running = a.wait_status(t, "running", Duration::from_secs(10)).await;
        if running["worker_id"] == "dead-a" {
            break t;
        }
        a.wait_turn(t, Duration::from_secs(20)).await;
    };
    a.kill9();
    let done = b.wait_turn(turn, Duration::from_secs(30)).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["worker_id"], "live-b");
    let answers = b
        .messages(conv)
        .await
        .into_iter()
        .filter(|m| m["turn_id"] == turn.to_string() && m["role"] == "assistant")
        .count();
    assert_eq!(answers, 1);
}

#[tokio::test]
async fn sigterm_drains_and_leaves_nothing_running() {
    let db = TestDb::new().await;
    let parley = Parley::start(BIN, &db.url(), "drain", &["--shutdown-grace-secs", "2"]);
    let conv = parley.create_conversation().await;
    let slow = parley.send(conv, "long [demo:slow]").await;
    parley.wait_status(slow, "running", Duration::from_secs(10)).await;
    let mut events = sse::connect(&parley.url(&format!("/api/conversations/{conv}/events")), None).await;
    let base = parley.base.clone();
    let (status, took) = parley.terminate(Duration::from_secs(15));
    assert!(status.success(), "exit status {status:?}");
    assert!(took < Duration::from_secs(6), "took {took:?} with a 2 s grace period");
    // The SSE stream was ended, not left hanging.
    let ended = tokio::time::timeout(Duration::from_secs(2), async { while events.next().await.is_some() {} }).await;
    assert!(ended.is_ok(), "SSE stream still open after exit ({base})");
    assert_eq!(running_turns(&db).await, 0, "nothing left running");
    let client = db.pool.get().await.expect("db");
    let status: String =
        client.query_one("select status from turn where turn_id = $1", &[&slow]).await.expect("turn").get(0);
    assert_eq!(status, "queued", "requeued for the next start");
    // And the next start answers it.
    let parley = Parley::start(BIN, &db.url(), "drain", FAST);
    assert_eq!(parley.wait_turn(slow, Duration::from_secs(30)).await["status"], "completed");
}

#[tokio::test]
async fn two_replicas_share_one_database() {
    let db = TestDb::new().await;
    let a = Parley::start(BIN, &db.url(), "replica-a", FAST);
    let b = Parley::start(BIN, &db.url(), "replica-b", FAST);
    let replicas = [&a, &b];

    // An SSE client on A follows everything.
    let convs: Vec<Uuid> = futures::future::join_all((0..20).map(|i| replicas[i % 2].create_conversation())).await;
    let mut followers = Vec::new();
    for c in &convs {
        followers.push(sse::connect(&a.url(&format!("/api/conversations/{c}/events")), None).await);
    }

    // 200 messages over 20 conversations, alternately to both replicas.
    let mut turns: Vec<(Uuid, Uuid, String)> = Vec::new();
    for round in 0..10 {
        let sends = convs.iter().enumerate().map(|(i, c)| {
            let replica = replicas[(i + round) % 2];
            let text = format!("conversation {i} message {round:02}");
            async move { (*c, replica.send(*c, &text).await, text) }
        });
        turns.extend(futures::future::join_all(sends).await);
    }
    for (_, t, _) in &turns {
        assert_eq!(a.wait_turn(*t, Duration::from_secs(60)).await["status"], "completed");
    }
    let mut ran_by_b = Vec::new();
    for (i, c) in convs.iter().enumerate() {
        let messages = a.messages(*c).await;
        let users: Vec<&Value> = messages.iter().filter(|m| m["role"] == "user").collect();
        let answers: Vec<&Value> = messages.iter().filter(|m| m["role"] == "assistant").collect();
        assert_eq!(users.len(), 10, "conversation {i}: every message stored once");
        assert_eq!(answers.len(), 10, "conversation {i}: every message answered exactly once");
        for (round, (u, ans)) in users.iter().zip(&answers).enumerate() {
            assert_eq!(u["content"], format!("conversation {i} message {round:02}"), "per-conversation order");
            assert_eq!(ans["turn_id"], u["turn_id"], "answers in message order");
        }
    }
    for (_, t, _) in &turns {
        if a.turn(*t).await["worker_id"] == "replica-b" {
            ran_by_b.push(*t);
        }
    }
    assert!(!ran_by_b.is_empty(), "replica B ran some turns");
    // A's SSE clients saw the turns that B ran, live.
    let mut completed_seen = std::collections::HashSet::new();
    for f in &mut followers {
        while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(300), f.next()).await {
            if m.event == "turn_completed" {
                completed_seen.insert(m.data["turn_id"].as_str().unwrap_or_default().to_owned());
            }
            if completed_seen.len() == turns.len() {
                break;
            }
        }
    }
    for t in &ran_by_b {
        assert!(completed_seen.contains(&t.to_string()), "A's follower missed turn {t} run by B");
    }

    // A cancel sent to one replica stops a turn running on the other.
    let conv = convs[0];
    let slow = b.send(conv, "long [demo:slow]").await;
    let running = a.wait_status(slow, "running", Duration::from_secs(10)).await;
    let other = if running["worker_id"] == "replica-a" { &b } else { &a };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    let (status, body) = other.post(conv, "/cancel").await;
    assert_eq!((status, body["ok"].as_bool()), (200, Some(true)), "{body}");
    let t = a.wait_turn(slow, Duration::from_secs(5)).await;
    assert_eq!(t["status"], "cancelled");
    assert!(started.elapsed() < Duration::from_secs(3), "cancel crossed replicas in {:?}", started.elapsed());
}

/// Rows of `conversation` left in any table that has a `conversation_id` column (tables
/// added later included), as `(table, count)` for those with rows.
async fn rows_left(db: &TestDb, conversation: Uuid) -> Vec<(String, i64)> {
    let client = db.pool.get().await.expect("db");
    let tables = client
        .query(
            "select table_name::text from information_schema.columns \
             where table_schema = 'public' and column_name = 'conversation_id' order by 1",
            &[],
        )
        .await
        .expect("tables");
    // conversation, session, message, turn, event, inbound_delivery at least.
    assert!(tables.len() >= 6, "{} tables with a conversation_id column", tables.len());
    let mut left = Vec::new();
    for row in tables {
        let table: String = row.get(0);
        let sql = format!("select count(*) from {table} where conversation_id = $1");
        let n: i64 = client.query_one(&sql, &[&conversation]).await.expect("count").get(0);
        if n > 0 {
            left.push((table, n));
        }
    }
    left
}

/// Deletes a conversation while its slow demo turn runs on replica A (one worker),
/// through A or through replica B; expects 204, then no row of it anywhere — right away
/// and after the turn would have ended — and A's only worker free at once (its next
/// turn, in another conversation, done long before the slow one would have been).
async fn delete_during_a_running_turn(through_other_replica: bool) {
    let db = TestDb::new().await;
    let args = ["--demo-chunk-delay-ms", "10", "--sweep-interval-secs", "1", "--workers", "1"];
    let a = Parley::start(BIN, &db.url(), "runs-a", &args);
    let conv = a.create_conversation().await;
    let first = a.send(conv, "remember: blue").await;
    a.wait_turn(first, Duration::from_secs(20)).await;
    let slow = a.send(conv, "six slow chunks [demo:slow]").await;
    let started = std::time::Instant::now();
    // Its reply text is being written to the event log.
    let client = db.pool.get().await.expect("db");
    loop {
        let n: i64 = client
            .query_one("select count(*) from event where turn_id = $1 and kind = 'text'", &[&slow])
            .await
            .expect("count")
            .get(0);
        if n > 0 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "the slow turn never wrote text");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(a.turn(slow).await["worker_id"], "runs-a");
    let b = through_other_replica.then(|| Parley::start(BIN, &db.url(), "deletes-b", &args));
    let deleter = b.as_ref().unwrap_or(&a);
    let deleted_at = std::time::Instant::now();
    let resp = deleter.http.delete(deleter.url(&format!("/api/conversations/{conv}"))).send().await.expect("delete");
    assert_eq!(resp.status(), 204);
    assert_eq!(rows_left(&db, conv).await, vec![], "rows left right after the delete");
    if let Some(b) = b {
        // From now on only A can run turns.
        let _ = b.terminate(Duration::from_secs(10));
    }

    // A's only worker is free: the slow turn stopped (it had seconds of reply to go).
    let other = a.create_conversation().await;
    let next = a.send(other, "are you free?").await;
    assert_eq!(a.wait_turn(next, Duration::from_secs(10)).await["status"], "completed");
    let free_after = deleted_at.elapsed();
    assert!(free_after < Duration::from_secs(3), "A's worker was busy for {free_after:?} after the delete");

    // Past the moment the slow turn would have finished: still nothing.
    tokio::time::sleep(Duration::from_secs(7).saturating_sub(started.elapsed())).await;
    assert_eq!(rows_left(&db, conv).await, vec![], "rows left after the turn would have ended");
    let (status, _) = a.get(&format!("/api/conversations/{conv}")).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn deleting_a_conversation_during_its_turn_stops_the_turn_and_leaves_no_row() {
    delete_during_a_running_turn(false).await;
}

#[tokio::test]
async fn deleting_a_conversation_on_another_replica_stops_its_turn_and_leaves_no_row() {
    delete_during_a_running_turn(true).await;
}
