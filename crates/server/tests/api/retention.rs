//! Retention: old events, inbound deliveries and ended sessions are deleted in batches,
//! with a clock moved forward (`apply_retention(now)`) and by the periodic pass itself
//! (rows back-dated in the database), keeping what stream replay and the next session
//! need.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use futures::future::BoxFuture;
use parley_assistant::Demo;
use parley_db::retention::DeletedSession;
use parley_db::{DbResult, GenericClient, Transaction};
use parley_orchestrator::retention::{Retention, RetentionHook, RetentionReport};
use parley_orchestrator::{Config, Orchestrator};
use parley_server::access::Access;
use parley_test_support::TestDb;
use serde_json::json;
use uuid::Uuid;

use super::{TestApp, fast_demo};

const DAY: chrono::TimeDelta = chrono::TimeDelta::days(1);

/// Records the sessions it is told about, after checking that they are already gone in
/// the transaction it is called in.
#[derive(Default)]
struct Recorder(Mutex<Vec<Uuid>>);

impl RetentionHook for Recorder {
    fn sessions_deleted<'a>(
        &'a self,
        tx: &'a Transaction<'a>,
        sessions: &'a [DeletedSession],
    ) -> BoxFuture<'a, DbResult<()>> {
        Box::pin(async move {
            let ids: Vec<Uuid> = sessions.iter().map(|s| s.session_id).collect();
            let left: i64 =
                tx.query_one("select count(*) from session where session_id = any($1)", &[&ids]).await?.get(0);
            assert_eq!(left, 0, "the hook runs in the transaction that deleted them");
            self.0.lock().expect("lock").extend(ids);
            Ok(())
        })
    }
}

async fn count(app: &TestApp, sql: &str, conv: Uuid) -> i64 {
    let client = app.db.pool.get().await.expect("client");
    client.query_one(sql, &[&conv]).await.expect(sql).get(0)
}

impl TestApp {
    async fn answered(&self, conv: Uuid, text: &str) -> Uuid {
        let turn = self.send(conv, text).await;
        assert_eq!(self.wait_turn(turn).await["status"], "completed");
        turn
    }
}

#[tokio::test]
async fn retention_deletes_old_rows_in_batches_and_keeps_what_replay_and_the_next_session_need() {
    let app = TestApp::spawn().await;
    // Conversation A: a turn, /reset (ends S1, starts S2), a turn, then a model change
    // ends S2 with no session after it. Conversation B: one turn.
    let a = app.create_conversation().await;
    app.answered(a, "before the reset, remember ALPHA").await;
    assert_eq!(app.post(a, "/reset").await.0, 200);
    let last_a = app.answered(a, "after the reset").await;
    assert_eq!(app.patch(a, json!({ "model": "opus" })).await.0, 200);
    let b = app.create_conversation().await;
    let (status, posted) = app.post_keyed(b, Some("k-1"), "only turn of b").await;
    assert_eq!(status, 202);
    let last_b: Uuid = posted["turn_id"].as_str().expect("turn").parse().expect("uuid");
    app.wait_turn(last_b).await;
    let sessions_a = app.sessions(a).await;
    assert_eq!(sessions_a.len(), 2);
    let (s1, s2) = (sessions_a[0]["session_id"].clone(), sessions_a[1]["session_id"].clone());
    let (_, listed) = app.get("/api/conversations").await;

    // A replica with tiny batches and a transcript hook.
    let hook = Arc::new(Recorder::default());
    let retention = Retention { batch_size: 3, pause: Duration::from_millis(1), ..Retention::default() };
    let replica = Orchestrator::builder(app.db.pool.clone(), Config { retention, ..Config::default() })
        .assistant(Arc::new(Demo::default()))
        .retention_hook(hook.clone())
        .build()
        .expect("replica");

    let events_a = count(&app, "select count(*) from event where conversation_id = $1", a).await;
    assert_eq!(replica.apply_retention(Utc::now()).await.expect("pass"), RetentionReport::default(), "nothing is old");

    // 31 days later: events and deliveries are old, sessions not yet.
    let report = replica.apply_retention(Utc::now() + DAY * 31).await.expect("pass");
    let kept_a = count(&app, "select count(*) from event where conversation_id = $1", a).await;
    let newest_turn_a = count(
        &app,
        "select count(*) from event where conversation_id = $1 and turn_id = \
                                    (select turn_id from event where conversation_id = $1 order by seq desc limit 1)",
        a,
    )
    .await;
    assert_eq!(kept_a, newest_turn_a, "only the newest turn's events are kept");
    assert!(kept_a >= 3 && kept_a < events_a, "{kept_a} of {events_a}");
    let newest_is_last: i64 =
        count(&app, &format!("select count(*) from event where conversation_id = $1 and turn_id = '{last_a}'"), a)
            .await;
    assert_eq!(newest_is_last, kept_a);
    assert!(
        count(&app, "select count(*) from event where conversation_id = $1", b).await > 0,
        "b's only turn is its newest"
    );
    assert_eq!(report.events, u64::try_from(events_a - kept_a).expect("count"), "{report:?}");
    assert_eq!(report.deliveries, 1);
    assert_eq!(report.sessions, 0);
    assert_eq!(count(&app, "select count(*) from inbound_delivery where conversation_id = $1", b).await, 0);
    // Streams resume where they did: the list's cursors did not move.
    let (_, relisted) = app.get("/api/conversations").await;
    let cursors = |l: &serde_json::Value| -> Vec<(String, i64)> {
        l["conversations"]
            .as_array()
            .expect("list")
            .iter()
            .map(|c| {
                (c["conversation_id"].as_str().unwrap_or("").to_owned(), c["resume_after_seq"].as_i64().unwrap_or(-1))
            })
            .collect()
    };
    assert_eq!(cursors(&relisted), cursors(&listed));
    assert_eq!(app.messages(a).await.len(), 6, "messages are never deleted by retention");

    // 91 days later: S1 goes (the hook sees it), S2 stays: it is A's newest session.
    let report = replica.apply_retention(Utc::now() + DAY * 91).await.expect("pass");
    assert_eq!(report.sessions, 1, "{report:?}");
    assert_eq!(*hook.0.lock().expect("lock"), vec![s1.as_str().expect("id").parse::<Uuid>().expect("uuid")]);
    let left: Vec<serde_json::Value> = app.sessions(a).await.iter().map(|s| s["session_id"].clone()).collect();
    assert_eq!(left, vec![s2]);
    assert_eq!(count(&app, "select count(*) from turn where conversation_id = $1 and session_id is null", a).await, 1);
    // The next session starts from the kept one: after the model change, without the
    // history the /reset cut.
    app.answered(a, "and now?").await;
    let sessions = app.sessions(a).await;
    assert_eq!(sessions.last().expect("session")["transition_reason"], "model-changed");
    let run = app.demo.requests().pop().expect("run");
    assert!(run.prompt.contains("after the reset") && !run.prompt.contains("ALPHA"), "{}", run.prompt);
    app.stop().await;
}

#[tokio::test]
async fn the_periodic_pass_deletes_back_dated_rows_by_itself() {
    let app = TestApp::spawn_with(TestDb::new().await, fast_demo(), Access::local(), |c| {
        c.retention = Retention {
            events: Retention::days(1),
            deliveries: Retention::days(1),
            ended_sessions: None,
            interval: Duration::from_millis(200),
            batch_size: 2,
            pause: Duration::from_millis(1),
        };
    })
    .await;
    let conv = app.create_conversation().await;
    app.answered(conv, "one").await;
    let last = app.answered(conv, "two").await;
    assert_eq!(app.post_keyed(conv, Some("dated"), "/help").await.0, 200);
    {
        let client = app.db.pool.get().await.expect("client");
        client.execute("update event set created_at = now() - interval '2 days'", &[]).await.expect("back-date");
        client
            .execute("update inbound_delivery set received_at = now() - interval '2 days'", &[])
            .await
            .expect("back-date");
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let others = count(
            &app,
            &format!("select count(*) from event where conversation_id = $1 and turn_id <> '{last}'"),
            conv,
        )
        .await;
        let deliveries = count(&app, "select count(*) from inbound_delivery where conversation_id = $1", conv).await;
        if others == 0 && deliveries == 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "still {others} old events and {deliveries} deliveries");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        count(&app, "select count(*) from event where conversation_id = $1", conv).await > 0,
        "the newest turn's stay"
    );
    app.stop().await;
}
